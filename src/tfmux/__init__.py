"""tfmux: serve many TensorFlow SavedModels from one process."""

from tfmux.config import ModelConfig, ServerConfig, VersionPolicy
from tfmux.errors import ErrorKind, ServingError
from tfmux.types import ModelRef, SignatureSpec, TensorSpec

__version__ = "0.1.0"

__all__ = [
    "ErrorKind",
    "ModelConfig",
    "ModelRef",
    "ServerConfig",
    "ServingError",
    "SignatureSpec",
    "TensorSpec",
    "VersionPolicy",
    "__version__",
]
