import torch

import harness.calling.implementations  # noqa: F401
from harness.calling.registry import ALL_DTYPES, REGISTRY, Implementation, Registry

SEED_LOGITS = torch.tensor([[2.0, 0.5, 1.0], [0.2, 1.5, 0.3], [1.0, 2.0, 0.1]])
SEED_TARGETS = torch.tensor([0, 1, 1])


def test_builtins_are_declared_once_with_all_dtypes():
    assert REGISTRY.names()[:3] == ["stable", "naive", "torch"]
    for impl in REGISTRY:
        assert impl.dtypes == ALL_DTYPES and impl.source == "built-in" and impl.description


CROSS_ENTROPY = [impl for impl in REGISTRY if impl.op == "cross_entropy"]  # the softmax family takes fn(logits)


def test_every_builtin_reproduces_the_seed_example():
    for impl in CROSS_ENTROPY:
        losses = impl.fn(SEED_LOGITS, SEED_TARGETS)
        assert losses.shape == (3,) and losses.dtype == torch.float32
        assert round(losses.mean().item(), 4) == 0.4449


def test_builtins_compute_in_the_input_dtype():
    for dtype in ALL_DTYPES:
        for impl in REGISTRY:  # the family's outputs too: log_softmax, softmax (N, C), logsumexp (N,)
            args = (SEED_LOGITS.to(dtype), SEED_TARGETS) if impl.op == "cross_entropy" else (SEED_LOGITS.to(dtype),)
            assert impl.fn(*args).dtype == dtype


def test_naive_overflows_where_stable_does_not():
    logits = torch.tensor([[100.0, 0.0]])
    assert torch.isinf(REGISTRY.get("naive").fn(logits, torch.tensor([1]))).all()
    assert REGISTRY.get("stable").fn(logits, torch.tensor([1])).item() == 100.0


def test_registry_rejects_duplicates_and_names_unknowns():
    registry = Registry()
    registry.register(Implementation("a", lambda x, t: x))
    try:
        registry.register(Implementation("a", lambda x, t: x))
    except ValueError as exc:
        assert "already registered" in str(exc)
    try:
        registry.get("b")
    except KeyError as exc:
        assert "unknown implementation 'b'" in str(exc)
