"""The same seed draws the same cases, whatever else the process has imported.

Since 6.132, Hypothesis's default provider mixes numeric and string constants into its
draws (about one draw in twenty), taken from the source of every *local* module in
``sys.modules``: the user's script, the user's kernel module, an editable install of
this harness, a conftest. One unused ``_unused = 1500`` line in a user's script then
changes which cases ``check`` draws, and the CLI, the Python API and the pytest fixture
disagree on the same budget.

Hypothesis has no setting that turns this off. The supported extension point is its
provider registry (``AVAILABLE_PROVIDERS``, the "alternative backends" API): the harness
registers, for the duration of each of its own searches only, a subclass of the default
provider whose constants come from Hypothesis's fixed global pool alone. It keeps the
name ``"hypothesis"`` because the engine gives its full behaviour (the data tree, novel
prefixes, shrinking) only to that backend. Users' own ``@given`` tests, outside the
harness's searches, keep the stock provider. ``tests/test_determinism.py`` pins the
behaviour in fresh processes, with and without a module full of constants imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hypothesis.internal.conjecture import providers
from hypothesis.internal.conjecture.choice import choice_constraints_key, choice_permitted

__all__ = ["GlobalConstantsProvider", "independent_of_local_constants"]

_BACKEND = "hypothesis"  # the name the engine treats as its own


class GlobalConstantsProvider(providers.HypothesisProvider):
    """Hypothesis's default provider, drawing constants only from its fixed global pool."""

    # Hypothesis's shared cache of permitted constants holds local ones too, so this
    # provider keeps its own, keyed the same way.
    _permitted: dict[tuple, tuple] = {}  # noqa: RUF012 - one cache for the class, by design

    def _maybe_draw_constant(self, choice_type: str, constraints: Any, *, p: float = 0.05) -> Any:
        assert self._random is not None
        if self._random.random() > p:
            return None
        key = (choice_type, choice_constraints_key(choice_type, constraints))
        pool = self._permitted.get(key)
        if pool is None:
            pool = tuple(
                choice
                for choice in providers.GLOBAL_CONSTANTS.set_for_type(choice_type)
                if choice_permitted(choice, constraints)
            )
            self._permitted[key] = pool
        return self._random.choice(pool) if pool else None


@contextmanager
def independent_of_local_constants() -> Iterator[None]:
    """Within this block, Hypothesis's default backend ignores constants from local modules."""
    previous = providers.AVAILABLE_PROVIDERS[_BACKEND]
    # a dotted path, the form every Hypothesis release since 6.132 resolves
    providers.AVAILABLE_PROVIDERS[_BACKEND] = f"{__name__}.{GlobalConstantsProvider.__name__}"
    try:
        yield
    finally:
        providers.AVAILABLE_PROVIDERS[_BACKEND] = previous
