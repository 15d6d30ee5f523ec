"""Class counts and batch sizes by structure: the sizes kernels are built around.

Kernels tile the class dimension (128 to 8,192 classes per tile), give a row to a warp
or a block (odd widths between 513 and 1,023 take other paths, pytorch#147284), and run
at vocabulary sizes padded to a multiple of 64 or 128. Sizes are drawn from bands that
reach each of those structures, and each band's strategy shrinks toward its small end.
"""

from __future__ import annotations

import math

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

__all__ = [
    "BANDS",
    "SMALL_CLASS_LIMIT",
    "TILE_SIZES",
    "VOCABULARIES",
    "band_of",
    "mid_counts",
    "row_counts",
    "size_bands",
    "small_counts",
    "tile_counts",
    "vocabulary_counts",
]

SMALL_CLASS_LIMIT = 64  # rows up to this width are drawn value by value
MID_CLASS_LIMIT = 1023
TILE_SIZES: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096, 8192)
# Real vocabularies and their padded sizes: Llama 2 (32,000), a power of two (32,768),
# GPT-2 (50,257, padded to 50,304), Llama 3 (128,256), Qwen2 (151,936), Gemma (256,000).
VOCABULARIES: tuple[int, ...] = (32_000, 32_768, 50_257, 50_304, 128_256, 151_936, 256_000)

# Bands for coverage reports: (name, smallest, largest) class count.
BANDS: tuple[tuple[str, int, int], ...] = (
    ("2-64", 2, 64),
    ("65-1023", 65, 1023),
    ("1024-4096", 1024, 4096),
    ("4097-32767", 4097, 32_767),
    ("32768-256000", 32_768, 256_000),
)


def band_of(n_classes: int) -> str:
    """The coverage band of a class count, e.g. '4097-32767' (counts above 256,000: the last band)."""
    for name, low, high in BANDS:
        if low <= n_classes <= high:
            return name
    return BANDS[-1][0] if n_classes > BANDS[-1][2] else BANDS[0][0]


def _check_limit(max_classes: int, smallest: int, what: str) -> None:
    if not isinstance(max_classes, int) or max_classes < smallest:
        raise InvalidArgument(f"{what} needs max_classes >= {smallest}, got {max_classes!r}")


def small_counts(max_classes: int) -> st.SearchStrategy[int]:
    """2 to 64 classes (or ``max_classes``): every value of the row drawn by Hypothesis."""
    _check_limit(max_classes, 2, "small_counts")
    return st.integers(2, min(SMALL_CLASS_LIMIT, max_classes))


def mid_counts(max_classes: int) -> st.SearchStrategy[int]:
    """65 to 1,023 classes, odd widths as likely as even ones (pytorch#147284)."""
    _check_limit(max_classes, SMALL_CLASS_LIMIT + 1, "mid_counts")
    return st.integers(SMALL_CLASS_LIMIT + 1, min(MID_CLASS_LIMIT, max_classes))


@st.composite
def _tile_count(draw, max_classes: int, min_tiles: int, tiles: tuple[int, ...]) -> int:
    tile = draw(st.sampled_from(tiles))
    most = max(min_tiles, (max_classes - 1) // tile)
    count = draw(st.integers(min_tiles, most))
    return min(max(tile * count + draw(st.sampled_from((0, -1, 1))), 2), max_classes)


def tile_counts(max_classes: int, *, min_tiles: int = 1) -> st.SearchStrategy[int]:
    """A multiple of a tile size (128 to 8,192), at least ``min_tiles`` of it, exactly or +-1.

    Powers of two are the counts of one tile. Raises InvalidArgument when not even one
    multiple of the smallest tile fits under ``max_classes``.
    """
    tiles = tuple(t for t in TILE_SIZES if t * min_tiles + 1 <= max_classes)
    if not tiles:
        raise InvalidArgument(
            f"tile_counts needs max_classes >= {TILE_SIZES[0] * min_tiles + 1} for {min_tiles} tiles, got {max_classes}"
        )
    return _tile_count(max_classes, min_tiles, tiles)


def vocabulary_counts(max_classes: int) -> st.SearchStrategy[int]:
    """Real vocabulary sizes and their padded sizes, up to ``max_classes``."""
    fitting = [v for v in VOCABULARIES if v <= max_classes]
    if not fitting:
        raise InvalidArgument(f"vocabulary_counts needs max_classes >= {VOCABULARIES[0]}, got {max_classes}")
    return st.sampled_from(fitting)


def size_bands(max_classes: int, bands: dict[str, int]) -> st.SearchStrategy[int]:
    """Class counts from weighted bands, e.g. ``{"mid": 1, "tiles": 2, "vocabulary": 1}``.

    Bands: ``small`` (2-64), ``mid`` (65-1,023), ``tiles`` (multiples of 128-8,192, +-1),
    ``wide`` (any count from 1,024 to 32,767), ``vocabulary`` (real vocabulary sizes).
    Bands that do not fit ``max_classes`` are left out; listed order is shrink order.
    """
    builders = {
        "small": (2, small_counts),
        "mid": (SMALL_CLASS_LIMIT + 1, mid_counts),
        "tiles": (TILE_SIZES[0] + 1, tile_counts),
        "wide": (1_025, lambda limit: st.integers(1_024, min(32_767, limit))),
        "vocabulary": (VOCABULARIES[0], vocabulary_counts),
    }
    unknown = set(bands) - set(builders)
    if unknown:
        raise InvalidArgument(f"unknown size band {sorted(unknown)[0]!r}; expected one of {', '.join(builders)}")
    weighted = [name for name, weight in bands.items() if max_classes >= builders[name][0] for _ in range(weight)]
    if not weighted:
        raise InvalidArgument(f"no size band of {sorted(bands)} fits max_classes={max_classes}")
    return st.sampled_from(weighted).flatmap(lambda name: builders[name][1](max_classes))


@st.composite
def _log_uniform(draw, low: int, high: int) -> int:
    top = max(low, 1).bit_length() - 1
    octave = draw(st.integers(top, high.bit_length() - 1))
    return draw(st.integers(max(low, 2**octave), min(high, 2 ** (octave + 1) - 1)))


def row_counts(max_rows: int, *, min_rows: int = 1) -> st.SearchStrategy[int]:
    """Batch sizes from ``min_rows`` to ``max_rows``: a power of two +-1 from 16 up, or any count,
    each octave (4-7, 8-15, ...) as likely as the next, so thousands of rows are as common as tens.

    Shrinks toward ``min_rows`` (or the smallest power of two +- 1 at least that).
    """
    if not isinstance(max_rows, int) or not 1 <= min_rows <= max_rows:
        raise InvalidArgument(f"need 1 <= min_rows <= max_rows, got min_rows={min_rows!r}, max_rows={max_rows!r}")
    powers = [2**k for k in range(4, int(math.log2(max_rows)) + 1)]
    structured = sorted({n for p in powers for n in (p - 1, p, p + 1) if min_rows <= n <= max_rows})
    anywhere = _log_uniform(min_rows, max_rows)
    return st.one_of(st.sampled_from(structured), anywhere) if structured else anywhere
