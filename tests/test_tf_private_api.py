"""Canary: the private TensorFlow APIs the session runtime (src/tfmux/runtimes/tf1.py) relies on.

tf1.py runs models through ``Session::MakeCallable`` via private Python API because the public
``Session.make_callable`` costs ~60 µs more per call (see the module's docstring). A TensorFlow
upgrade may remove or change any of these without notice; this test names the one that broke,
so the upgrade fails here with a clear message instead of in every model call.

Every private name tf1.py uses, and what it is used for:

- ``tensorflow.python.client.pywrap_tf_session`` (module): the C API binding;
- ``pywrap_tf_session.TF_SessionRunCallable(c_session, handle, feeds, run_metadata)``: runs a
  callable, skipping its Python wrapper;
- ``Session._make_callable_from_options(CallableOptions)``: makes the C++ callable;
- ``Session._session``: the C session handle TF_SessionRunCallable takes;
- ``<callable>._handle``: the callable's C++ handle;
- ``tensorflow.python.eager.context.context().config``: the ConfigProto a v1 Session gets in a
  TF2 process (TF1Runtime copies it to set thread counts).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.tf

RUNTIME = "src/tfmux/runtimes/tf1.py"


def _broken(what: str, exc: BaseException | None = None) -> str:
    import tensorflow as tf

    cause = f" ({type(exc).__name__}: {exc})" if exc is not None else ""
    return (
        f"TensorFlow {tf.__version__} no longer provides {what}{cause}, a private API "
        f"{RUNTIME} uses to run TF1 sessions. Adapt {RUNTIME} (or pin TensorFlow) before "
        "upgrading."
    )


def _require(owner: Any, attribute: str, what: str) -> Any:
    value = getattr(owner, attribute, None)
    assert value is not None, _broken(what)
    return value


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    """A tiny graph, y = 2 * x (NaN refused), in its own session, as tf1.py gives every model."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None], name="x")
        tf.debugging.check_numerics(tf.multiply(x, 2.0), "x must be finite", name="y")
    with tf.compat.v1.Session(graph=graph) as running:
        yield running


def test_pywrap_tf_session_module_exists() -> None:
    try:
        module = importlib.import_module("tensorflow.python.client.pywrap_tf_session")
    except ImportError as exc:
        pytest.fail(_broken("the module tensorflow.python.client.pywrap_tf_session", exc))
    _require(module, "TF_SessionRunCallable", "pywrap_tf_session.TF_SessionRunCallable")


def test_session_callable_runs_through_the_c_api(session: Any) -> None:
    """The exact call sequence of tf1.py's _Plan, on a real graph."""
    import tensorflow as tf
    from tensorflow.core.protobuf import config_pb2
    from tensorflow.python.client import pywrap_tf_session

    make = _require(session, "_make_callable_from_options", "Session._make_callable_from_options")
    c_session = _require(session, "_session", "Session._session (the C session handle)")
    run = _require(pywrap_tf_session, "TF_SessionRunCallable", "TF_SessionRunCallable")
    options = config_pb2.CallableOptions(feed=["x:0"], fetch=["y:0"])
    try:
        callable_ = make(options)
    except Exception as exc:
        pytest.fail(_broken("Session._make_callable_from_options(CallableOptions)", exc))
    handle = _require(callable_, "_handle", "the session callable's _handle")
    try:
        results = run(c_session, handle, [np.array([1.0, 2.5], np.float32)], None)
    except Exception as exc:
        pytest.fail(_broken("TF_SessionRunCallable(session, handle, feeds, None)", exc))
    assert len(results) == 1, _broken("TF_SessionRunCallable returning a list of outputs")
    np.testing.assert_array_equal(results[0], np.array([2.0, 5.0], np.float32))
    # tf1.py maps a failing run to a ServingError by catching tf.errors.OpError.
    with pytest.raises(tf.errors.OpError):
        run(c_session, handle, [np.array([np.nan], np.float32)], None)
    del callable_  # releases the C++ callable while the session is open, as tf1.py does


def test_eager_context_config_is_a_config_proto() -> None:
    import tensorflow as tf

    try:
        from tensorflow.python.eager import context
    except ImportError as exc:
        pytest.fail(_broken("the module tensorflow.python.eager.context", exc))
    config = _require(context.context(), "config", "context.context().config")
    assert isinstance(config, tf.compat.v1.ConfigProto), _broken("a ConfigProto as context.config")
    config.intra_op_parallelism_threads = 1  # what TF1Runtime sets on its copy
