"""Plain data shared by the core, the runtimes and the transports (numpy, no TensorFlow)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"
DEFAULT_SIGNATURE = "serving_default"

# Neutral dtype names (numpy's, plus "string" for TensorFlow strings held as numpy object
# arrays of bytes). Each maps to the TensorFlow enum name used in TF Serving metadata.
DTYPE_TO_TF: dict[str, str] = {
    "float16": "DT_HALF",
    "bfloat16": "DT_BFLOAT16",
    "float32": "DT_FLOAT",
    "float64": "DT_DOUBLE",
    "int8": "DT_INT8",
    "int16": "DT_INT16",
    "int32": "DT_INT32",
    "int64": "DT_INT64",
    "uint8": "DT_UINT8",
    "uint16": "DT_UINT16",
    "uint32": "DT_UINT32",
    "uint64": "DT_UINT64",
    "bool": "DT_BOOL",
    "string": "DT_STRING",
}
TF_TO_DTYPE: dict[str, str] = {v: k for k, v in DTYPE_TO_TF.items()}

Shape = tuple[int | None, ...]


def numpy_dtype(dtype: str) -> np.dtype:
    """The numpy dtype that holds values of a neutral dtype name."""
    known = _NUMPY_DTYPES.get(dtype)
    if known is not None:
        return known
    if dtype == "string":
        return np.dtype(object)
    if dtype == "bfloat16":
        import ml_dtypes  # shipped with TensorFlow

        return np.dtype(ml_dtypes.bfloat16)  # type: ignore[no-any-return]
    return np.dtype(dtype)


def dtype_name(array: np.ndarray) -> str:
    """The neutral dtype name of a numpy array (object and bytes arrays are strings)."""
    dtype = array.dtype
    name = _DTYPE_NAMES.get(dtype)  # str(dtype) costs ~2 µs: named once per dtype
    if name is None:
        name = "string" if dtype.kind in ("O", "S", "U") else str(dtype)
        if len(_DTYPE_NAMES) < 256:
            _DTYPE_NAMES[dtype] = name
    return name


_NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name) for name in DTYPE_TO_TF if name not in ("string", "bfloat16")
}
_DTYPE_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in _NUMPY_DTYPES.items()}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a signature.

    ``shape`` is ``None`` for unknown rank; a ``None`` dimension is variable.
    ``tensor_name`` is the graph tensor behind the alias (``x:0``), where known.
    """

    name: str
    dtype: str
    shape: Shape | None
    tensor_name: str = ""


@dataclass(frozen=True)
class SignatureSpec:
    """A signature: named inputs and outputs and the method it implements."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]
    method_name: str = PREDICT_METHOD


@dataclass(frozen=True)
class ModelRef:
    """What a request names: a model and at most one of a version or a label."""

    name: str
    version: int | None = None
    label: str | None = None
    routing_key: str | None = None  # sticky split assignment (e.g. X-Routing-Key)

    def describe(self) -> str:
        """TF Serving's wording for the servable a request asks for."""
        if self.version is not None:
            return f"Specific({self.name}, {self.version})"
        if self.label is not None:
            return f"Label({self.name}, {self.label})"
        return f"Latest({self.name})"


@dataclass
class InferenceResult:
    """Outputs of one run, with the version that actually served it."""

    model_name: str
    version: int
    signature: SignatureSpec
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # as validated and run
    arm: str = ""  # the split arm that chose this version, when a split did


@dataclass(frozen=True)
class VersionStatus:
    """The state of one model version, as TF Serving reports it.

    ``state`` is one of START, LOADING, AVAILABLE, UNLOADING, END; a failed load is END with a
    non-OK ``error_code`` (an ErrorKind name) and the message.
    """

    version: int
    state: str
    error_code: str = "OK"
    error_message: str = ""
    memory_bytes: int | None = None  # what the version costs (None: not loaded)
    memory_measured: bool = False  # measured after loading, rather than estimated
