"""The one check every decoder applies to a tensor shape a client sends.

numpy cannot hold more than 64 dimensions, nor a shape whose element count (of its non-zero
dimensions) times the item size passes the address space, even for an empty array; and no
request may describe a tensor beyond the 2 GiB a single protobuf message can carry. A shape
outside these bounds is the client's mistake: INVALID_ARGUMENT naming the tensor, never a
numpy error escaping as a 500.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from tfmux.errors import invalid_argument

MAX_RANK = 64  # numpy's limit (NPY_MAXDIMS)
# A single protobuf message cannot exceed 2 GiB, so no tensor a client can send may either;
# the same bound stops a one-value broadcast from asking for unbounded memory.
MAX_TENSOR_BYTES = 2**31 - 1
POINTER_BYTES = 8  # a string element is held as an object pointer


def checked_shape(dims: Iterable[int], itemsize: int, tensor: str) -> list[int]:
    """``dims`` as a list, or INVALID_ARGUMENT when numpy could not make a tensor of it."""
    shape = [int(d) for d in dims]
    if any(d < 0 for d in shape):
        raise invalid_argument(f"tensor '{tensor}': shape {shape} has a negative dimension")
    if len(shape) > MAX_RANK:
        raise invalid_argument(
            f"tensor '{tensor}': shape has {len(shape)} dimensions, more than {MAX_RANK}"
        )
    size = math.prod(d for d in shape if d) * itemsize
    if size > MAX_TENSOR_BYTES:
        raise invalid_argument(
            f"tensor '{tensor}': shape {_short(shape)} spans {size} bytes, more than the "
            f"{MAX_TENSOR_BYTES} a tensor may have"
        )
    return shape


def _short(shape: list[int]) -> str:
    text = str(shape)
    return text if len(text) <= 80 else text[:77] + "..."
