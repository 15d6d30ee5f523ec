"""Implementations that report what they received, for tests of the calling protocol."""

import torch


def layout(x, *rest):
    """(size..., stride..., storage offset, storage elements) of the first input, as float64."""
    elements = x.untyped_storage().nbytes() // x.element_size()
    return torch.tensor([*x.shape, *x.stride(), x.storage_offset(), elements], dtype=torch.float64)


def storage(x, *rest):
    """The whole storage behind the first input, as a flat tensor of its dtype."""
    return torch.empty(0, dtype=x.dtype).set_(x.untyped_storage())


def with_keywords(x, *, scale, label, flag, nothing, weight):
    """x.sum() * scale + weight.sum(), with checks that the other keywords arrived as given."""
    assert label == "mean" and flag is True and nothing is None, (label, flag, nothing)
    return x.sum() * scale + weight.sum()


def square_sum(x):
    return (x * x).sum()


def squares(x):
    return x * x


def detached_squares(x):
    return (x * x).detach()
