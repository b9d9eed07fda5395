"""TF Serving's small config files in protobuf text format: BatchingParameters
(``--batching_parameters_file``), MonitoringConfig (``--monitoring_config_file``) and SSLConfig
(``--ssl_config_file``).

The tensorflow-serving-api package ships none of these three messages, so they are declared
here, field for field (names, numbers, types) as in TF Serving's
``servables/tensorflow/session_bundle_config.proto``, ``config/monitoring_config.proto`` and
``config/ssl_config.proto``, in a private descriptor pool; protobuf's own text parser then
reads the files exactly as TF Serving's ``ParseProtoTextFile`` does (unknown fields are errors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    message_factory,
    text_format,
    wrappers_pb2,
)

_F = descriptor_pb2.FieldDescriptorProto
_INT64, _STRING, _BOOL, _MESSAGE = _F.TYPE_INT64, _F.TYPE_STRING, _F.TYPE_BOOL, _F.TYPE_MESSAGE
_OPTIONAL, _REPEATED = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED

# message -> [(field, number, type, label, message type name)]
_MESSAGES: dict[str, list[tuple[str, int, int, int, str]]] = {
    "BatchingParameters": [
        ("max_batch_size", 1, _MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, _MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, _MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, _MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, _MESSAGE, _OPTIONAL, ".google.protobuf.StringValue"),
        ("allowed_batch_sizes", 6, _INT64, _REPEATED, ""),
        ("pad_variable_length_inputs", 7, _BOOL, _OPTIONAL, ""),
        ("enable_large_batch_splitting", 8, _MESSAGE, _OPTIONAL, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, _MESSAGE, _OPTIONAL, ".google.protobuf.Int64Value"),
    ],
    "PrometheusConfig": [
        ("enable", 1, _BOOL, _OPTIONAL, ""),
        ("path", 2, _STRING, _OPTIONAL, ""),
    ],
    "MonitoringConfig": [
        ("prometheus_config", 1, _MESSAGE, _OPTIONAL, ".tensorflow.serving.PrometheusConfig"),
    ],
    "SSLConfig": [
        ("server_key", 1, _STRING, _OPTIONAL, ""),
        ("server_cert", 2, _STRING, _OPTIONAL, ""),
        ("custom_ca", 3, _STRING, _OPTIONAL, ""),
        ("client_verify", 4, _BOOL, _OPTIONAL, ""),
    ],
}


def _build_classes() -> dict[str, Any]:
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    file = descriptor_pb2.FileDescriptorProto(
        name="tfmux/tfs_config_files.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[wrappers.name],
    )
    for name, fields in _MESSAGES.items():
        message = file.message_type.add(name=name)
        for field, number, kind, label, type_name in fields:
            added = message.field.add(name=field, number=number, type=kind, label=label)
            if type_name:
                added.type_name = type_name
    pool.Add(file)
    return {
        name: message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"tensorflow.serving.{name}")
        )
        for name in _MESSAGES
    }


_CLASSES = _build_classes()


class ProtoFileError(ValueError):
    """A config file that cannot be read or parsed; the message names the file."""


def parse_text_file(message: str, path: Path) -> Any:
    """The ``tensorflow.serving.<message>`` in text format at ``path``."""
    parsed = _CLASSES[message]()
    try:
        text_format.Parse(path.read_text(), parsed)
    except OSError as exc:
        raise ProtoFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    except text_format.ParseError as exc:
        raise ProtoFileError(
            f"Error parsing text-format tensorflow.serving.{message} in {path}: {exc}"
        ) from None
    return parsed


def parse_text(message: str, text: str) -> Any:
    """The ``tensorflow.serving.<message>`` of ``text`` (protobuf text format)."""
    parsed = _CLASSES[message]()
    text_format.Parse(text, parsed)
    return parsed
