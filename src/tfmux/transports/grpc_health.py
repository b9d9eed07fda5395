"""gRPC's standard health service (``grpc.health.v1.Health/Check``), as TF Serving's
``--enable_grpc_healthcheck_service`` offers it: Kubernetes gRPC probes and grpc_health_probe
call it.

The two messages are declared here (names, numbers and types as in gRPC's ``health.proto``)
in a private descriptor pool, so no package is needed. Only the unary ``Check`` is served (the
streaming ``Watch`` answers UNIMPLEMENTED, as on any server without it). The overall service
(``""``) and TF Serving's two services are SERVING once the server is ready (its eager loads
have ended) and NOT_SERVING before; any other name is NOT_FOUND, as the protocol says.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tfmux.transports.grpc_server import HandlerHost

SERVICE = "grpc.health.v1.Health"
# The services a Check may name: the server as a whole and what TF Serving registers.
KNOWN = frozenset(
    {
        "",
        "ModelService",
        "PredictionService",
        "tensorflow.serving.ModelService",
        "tensorflow.serving.PredictionService",
    }
)
SERVING, NOT_SERVING = 1, 2


def _messages() -> tuple[Any, Any]:
    field = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="tfmux/grpc_health.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=field.TYPE_STRING, label=field.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for number, name in enumerate(("UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN")):
        status.value.add(name=name, number=number)
    response.field.add(
        name="status",
        number=1,
        type=field.TYPE_ENUM,
        label=field.LABEL_OPTIONAL,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return tuple(  # type: ignore[return-value]
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"grpc.health.v1.{name}"))
        for name in ("HealthCheckRequest", "HealthCheckResponse")
    )


HealthCheckRequest, HealthCheckResponse = _messages()


class GrpcHealth:
    """The Health service over the server's readiness."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        self._ready = ready

    def register(self, server: HandlerHost) -> None:
        check = grpc.unary_unary_rpc_method_handler(
            self._check,
            request_deserializer=HealthCheckRequest.FromString,
            response_serializer=HealthCheckResponse.SerializeToString,
        )
        server.add_generic_rpc_handlers(
            [grpc.method_handlers_generic_handler(SERVICE, {"Check": check})]
        )

    async def _check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if request.service not in KNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service}")
        return HealthCheckResponse(status=SERVING if self._ready() else NOT_SERVING)
