"""Process-wide TensorFlow settings: op thread pools and GPU memory, applied once at startup."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorFlowOptions:
    """Thread counts (None: TensorFlow's default, one per core) and GPU memory policy.

    GPU memory grows on demand by default (TensorFlow otherwise maps nearly all of it at the
    first op); ``gpu_memory_limit_mb`` caps each GPU instead (the two are exclusive in
    TensorFlow, so a limit wins).
    """

    intra_op_threads: int | None = None
    inter_op_threads: int | None = None
    gpu_memory_growth: bool = True
    gpu_memory_limit_mb: int | None = None


def configure_tensorflow(options: TensorFlowOptions) -> str:
    """Apply ``options`` before the first model loads; returns a line for the startup log.

    Must run before TensorFlow initialises its runtime (the first op or session): later calls
    raise RuntimeError inside TensorFlow, which is reported, not hidden.
    """
    from tfmux.runtimes import quiet_tensorflow

    quiet_tensorflow()
    import tensorflow as tf

    if options.intra_op_threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(options.intra_op_threads)
    if options.inter_op_threads is not None:
        tf.config.threading.set_inter_op_parallelism_threads(options.inter_op_threads)
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        if options.gpu_memory_limit_mb is not None:
            limit = tf.config.LogicalDeviceConfiguration(memory_limit=options.gpu_memory_limit_mb)
            tf.config.set_logical_device_configuration(gpu, [limit])
        elif options.gpu_memory_growth:
            tf.config.experimental.set_memory_growth(gpu, True)
    threads = (
        f"intra-op threads {options.intra_op_threads or 'default'}, "
        f"inter-op threads {options.inter_op_threads or 'default'}"
    )
    memory = (
        f"memory limit {options.gpu_memory_limit_mb} MiB per GPU"
        if options.gpu_memory_limit_mb is not None
        else f"memory growth {'on' if options.gpu_memory_growth else 'off'}"
    )
    where = f"{len(gpus)} GPU(s)" if gpus else "no GPU found, GPU settings unused"
    return f"TensorFlow {tf.__version__}: {threads}; {where} ({memory})"
