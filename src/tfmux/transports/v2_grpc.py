"""KServe V2 / Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), with
Triton's model repository RPCs. Stubs are the generated ones tritonclient ships.

Each RPC decodes its request, calls the ServingService and encodes the answer; a ServingError
ends the RPC with the gRPC status of its kind, and anything unexpected with INTERNAL, so no
request can take a handler or the server down.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeAlias

import grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc

from tfmux import __version__
from tfmux.core.service import LoadFailed, ServingService
from tfmux.errors import (
    ErrorKind,
    ServingError,
    failed_precondition,
    invalid_argument,
)
from tfmux.errors import unimplemented as unimplemented_error
from tfmux.transports import v2_proto, v2_types
from tfmux.transports.grpc_server import abort_with, authorization, grpc_deadline, routing_key
from tfmux.types import DEFAULT_SIGNATURE, SignatureSpec

log = logging.getLogger("tfmux.v2_grpc")

SERVER_NAME = "tfmux"
EXTENSIONS = ["model_repository"]
_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
Context: TypeAlias = grpc.aio.ServicerContext
Handler: TypeAlias = Callable[[Any, Any, Context], Awaitable[Any]]


def _guarded(handler: Handler) -> Handler:
    """End the RPC with the status of a ServingError's kind, or INTERNAL for anything else."""

    @functools.wraps(handler)
    async def call(self: Any, request: Any, context: Context) -> Any:
        try:
            return await handler(self, request, context)
        except ServingError as exc:
            await abort_with(context, exc)
        except Exception as exc:
            log.exception("V2 gRPC %s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return call


def _unimplemented(rpc: str) -> Callable[[Any, Context], Awaitable[None]]:
    async def answer(request: Any, context: Context) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"tfmux does not implement {rpc}")

    return answer


class KServeGrpc:
    """The GRPCInferenceService servicer. RPCs it does not define answer UNIMPLEMENTED."""

    def __init__(self, service: ServingService) -> None:
        self._service = service
        for method in _SERVICE.methods:
            if not hasattr(self, method.name):
                setattr(self, method.name, _unimplemented(method.name))

    def register(self, server: grpc.aio.Server) -> None:
        service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    # -- health and metadata ---------------------------------------------------------------

    @_guarded
    async def ServerLive(self, request: Any, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    @_guarded
    async def ServerReady(self, request: Any, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self._service.ready())

    @_guarded
    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=__version__, extensions=EXTENSIONS
        )

    @_guarded
    async def ModelReady(self, request: Any, context: Context) -> Any:
        """Ready when the named version (or the label's, for ``MODEL@LABEL``, or the one
        "latest" means) is AVAILABLE; an unknown model, version or label is not ready, as in
        Triton, rather than an error."""
        ref = v2_types.model_ref(request.name, v2_proto.parse_version(request.version))
        try:
            version = ref.version
            if ref.label is not None:
                version = self._service.resolve_version(ref)
            statuses = self._service.status(ref.name, version)
        except ServingError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return pb.ModelReadyResponse(ready=False)
            raise
        return pb.ModelReadyResponse(ready=any(s.state == "AVAILABLE" for s in statuses))

    @_guarded
    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        """The default signature of the named (or latest) version; loads a lazy model."""
        name = v2_proto.require_name(request.name, "name")
        version = v2_proto.parse_version(request.version)
        ref = v2_types.model_ref(name, version, routing_key=routing_key(context))
        meta = await self._service.metadata(ref)
        signature = _default_signature(meta.name, meta.version, meta.signatures)
        available = sorted(
            {s.version for s in self._service.status(meta.name) if s.state == "AVAILABLE"}
            | {meta.version}
        )
        answer = v2_types.model_metadata(meta.name, meta.version, available, signature)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=answer["name"],
            versions=answer["versions"],
            platform=answer["platform"],
            inputs=[tensor(**t) for t in answer["inputs"]],
            outputs=[tensor(**t) for t in answer["outputs"]],
        )

    # -- inference -------------------------------------------------------------------------

    @_guarded
    async def ModelInfer(self, request: Any, context: Context) -> Any:
        call = v2_proto.parse_call(request, routing_key(context))
        result = await self._service.infer(
            call.ref,
            lambda _signature: v2_proto.decode_inputs(request),
            signature_name=call.signature_name,
            output_names=call.output_names,
            method="infer",
            deadline=v2_types.deadline_after(call.timeout_us, grpc_deadline(context)),
        )
        return v2_proto.encode_response(request.id, result, call.output_names)

    # -- model repository ------------------------------------------------------------------

    @_guarded
    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        _only_default_repository(request.repository_name)
        index = pb.RepositoryIndexResponse.ModelIndex
        return pb.RepositoryIndexResponse(
            models=[
                index(name=e.name, version=e.version or "", state=e.state, reason=e.reason)
                for e in v2_types.repository_index(self._service, request.ready)
            ]
        )

    @_guarded
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        """Load (or reload) a configured model, or a folder of a configured repository, by
        name. As in Triton (and the V2 REST door), a load that fails is INVALID_ARGUMENT with
        the load error's message. Needs the admin token in ``authorization`` metadata."""
        _only_default_repository(request.repository_name)
        v2_types.refuse_model_files(request.parameters)
        for key in request.parameters:
            raise invalid_argument(f"unrecognized load parameter '{key}'")
        name = v2_proto.require_name(request.model_name)
        try:
            await self._service.load_model(name, authorization(context))
        except LoadFailed as exc:
            raise invalid_argument(exc.message) from exc
        return pb.RepositoryModelLoadResponse()

    @_guarded
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        """``unload_dependents`` is accepted (tfmux models have no dependents)."""
        _only_default_repository(request.repository_name)
        dependents = request.parameters.get("unload_dependents")
        if dependents is not None and dependents.WhichOneof("parameter_choice") != "bool_param":
            raise invalid_argument("parameter 'unload_dependents' must be a bool_param")
        name = v2_proto.require_name(request.model_name)
        await self._service.unload_model(name, authorization(context))
        return pb.RepositoryModelUnloadResponse()


def _only_default_repository(repository_name: str) -> None:
    if repository_name:
        raise unimplemented_error("'repository_name' specification is not supported")


def _default_signature(
    name: str, version: int, signatures: Mapping[str, SignatureSpec]
) -> SignatureSpec:
    signature = signatures.get(DEFAULT_SIGNATURE)
    if signature is None:
        have = ", ".join(sorted(signatures)) or "none"
        raise failed_precondition(
            f"model {name} version {version} has no '{DEFAULT_SIGNATURE}' signature, which V2 "
            f"metadata describes (it has: {have})"
        )
    return signature
