"""Shared pieces of the parser fuzz tests (tests/test_fuzz_*.py).

Hypothesis settings: derandomized (the same examples every run) with no deadline. The default
profile keeps every fuzz file within a few seconds on a busy 2-core machine; set
``TFMUX_FUZZ_PROFILE=long`` for a longer local hunt (50x the examples, random seeds).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tfmux.errors import ServingError
from tfmux.types import DTYPE_TO_TF, numpy_dtype

T = TypeVar("T")
LONG = os.environ.get("TFMUX_FUZZ_PROFILE") == "long"
DTYPES = tuple(DTYPE_TO_TF)


def fuzz(examples: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Hypothesis settings for a fuzz test: ``examples`` per run (50x in the long profile)."""
    return settings(
        max_examples=examples * 50 if LONG else examples,
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def only_serving_errors(call: Callable[[], T]) -> T | ServingError:
    """The call's result, or the ServingError it raised; anything else fails the test."""
    try:
        return call()
    except ServingError as exc:
        assert exc.message, "an error must say what is wrong"
        return exc


# JSON values of every kind, with the awkward ones: huge and negative ints, non-finite and
# extreme floats, surrogates and NUL in strings, deep and wide nesting, b64-looking objects.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
    | st.builds(lambda s: {"b64": s}, st.text(max_size=8))
)
JSON = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
# Shapes a client might send: small, empty, negative, enormous, and too many dimensions.
DIM = st.integers(min_value=0, max_value=4) | st.sampled_from([-1, 2**31, 2**40, 2**63, 2**64])
SHAPES = st.lists(DIM, max_size=5) | st.just([1] * 65) | st.just([0, 2**62])


def mutations(data: bytes) -> st.SearchStrategy[bytes]:
    """``data`` with a byte flipped, a span dropped or random bytes spliced in."""
    if not data:
        return st.binary(max_size=16)
    index = st.integers(0, len(data) - 1)
    flip = st.tuples(index, st.integers(1, 255)).map(
        lambda t: data[: t[0]] + bytes([data[t[0]] ^ t[1]]) + data[t[0] + 1 :]
    )
    drop = st.tuples(index, st.integers(1, 8)).map(lambda t: data[: t[0]] + data[t[0] + t[1] :])
    splice = st.tuples(index, st.binary(min_size=1, max_size=8)).map(
        lambda t: data[: t[0]] + t[1] + data[t[0] :]
    )
    return flip | drop | splice


def arrays(dtype: str, max_rank: int = 3) -> st.SearchStrategy[np.ndarray]:
    """Valid tensors of a neutral dtype: any values the dtype holds, small shapes."""
    shapes = st.lists(st.integers(0, 3), max_size=max_rank).map(tuple)
    if dtype == "string":
        leaf = st.binary(max_size=6)
        return shapes.flatmap(
            lambda shape: st.lists(leaf, min_size=math.prod(shape), max_size=math.prod(shape)).map(
                lambda items: _objects(items, shape)
            )
        )
    from hypothesis.extra import numpy as hnp

    np_dtype = numpy_dtype(dtype)
    if dtype == "bfloat16":  # hypothesis cannot draw ml_dtypes; go through float32
        return hnp.arrays(np.float32, shapes, elements=st.floats(-1e3, 1e3, width=32)).map(
            lambda a: a.astype(np_dtype)
        )
    return hnp.arrays(np_dtype, shapes)


def _objects(items: list[bytes], shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array.reshape(shape)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape, dtype and values (NaN equal to NaN, bit patterns aside)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind == "O":
        return [bytes(x) for x in a.reshape(-1)] == [bytes(x) for x in b.reshape(-1)]
    if a.dtype.kind == "f" or str(a.dtype) == "bfloat16":
        x, y = a.astype(np.float64), b.astype(np.float64)
        return bool(np.array_equal(x, y, equal_nan=True))
    return bool(np.array_equal(a, b))
