"""copy_like keeps size, strides, storage offset and values; clone() would not."""

import pytest
import torch

from harness.calling.layout import copy_like, describe_layout, storage_extent

_X = torch.arange(30.0).reshape(6, 5)
VIEWS = {
    "contiguous": _X,
    "transposed": _X.t(),
    "sliced with an offset": _X[1:, 2:],
    "strided": _X[::2, ::3],
    "expanded row": _X[2].expand(4, 5),
    "transposed and sliced": _X.t()[1:3],
    "permuted 3-d": torch.arange(24.0).reshape(2, 3, 4).permute(2, 0, 1)[1:],
    "empty": _X[:0],
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_copy_like_keeps_the_layout_and_values(name):
    view = VIEWS[name]
    copy = copy_like(view)
    assert (copy.shape, copy.stride(), copy.storage_offset()) == (view.shape, view.stride(), view.storage_offset())
    assert torch.equal(copy, view) and copy.dtype == view.dtype
    if view.numel():
        assert copy.untyped_storage().data_ptr() != view.untyped_storage().data_ptr()  # owned


def test_expanded_copies_share_storage_like_the_original():
    copy = copy_like(_X[2].expand(4, 5))
    assert storage_extent(copy) == 15 and copy.stride() == (0, 1)  # offset 10, then one row of 5
    assert describe_layout(copy) == "strides (0, 1), offset 10"
