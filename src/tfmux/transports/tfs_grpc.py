"""TF Serving's gRPC API (package tensorflow.serving): PredictionService and ModelService.

Each RPC decodes its request, calls the ServingService, and encodes the answer; a ServingError
ends the RPC with the gRPC status of the same name, and any other exception with INTERNAL, so
no request can take a handler or the server down.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from tfmux.config import ConfigError, ModelConfig, models_from_tfs_message
from tfmux.core.service import ServingService
from tfmux.errors import ErrorKind, ServingError, internal, invalid_argument, unimplemented
from tfmux.transports import tfs_protos as protos
from tfmux.transports.grpc_server import abort_with, authorization, grpc_deadline, routing_key
from tfmux.transports.tensor_proto import to_array, write_tensor_proto
from tfmux.transports.tfs_results import examples_input
from tfmux.types import CLASSIFY_METHOD, REGRESS_METHOD, InferenceResult, ModelRef, SignatureSpec

log = logging.getLogger("tfmux.grpc")
Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer")
Handler = Callable[[Servicer, Request, grpc.aio.ServicerContext], Awaitable[Response]]
_SIGNATURE_DEF = "signature_def"
# ModelConfig fields a TF Serving ModelServerConfig has no place for.
_TFMUX_ONLY = ("load", "runtime", "batching", "warmup", "pinned")


def _rpc(handler: Handler[Servicer, Request, Response]) -> Handler[Servicer, Request, Response]:
    """End the RPC with the error's status instead of letting an exception escape."""

    @functools.wraps(handler)
    async def call(self: Servicer, request: Request, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(self, request, context)
        except ServingError as exc:
            await abort_with(context, exc)
        except ConfigError as exc:
            await abort_with(context, invalid_argument(str(exc)))
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            log.exception("%s failed", handler.__name__)
            await abort_with(context, internal(f"{type(exc).__name__}: {exc}"))

    return call


class TfServingGrpc:
    """TF Serving's two gRPC services over one ServingService."""

    def __init__(self, service: ServingService) -> None:
        self._service = service

    def register(self, server: grpc.aio.Server) -> None:
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self._service), server
        )
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self._service), server
        )


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ServingService) -> None:
        self._service = service

    @_rpc
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        ref = _routed_ref(request, context)
        wanted = list(request.output_filter)
        duplicates = sorted({name for name in wanted if wanted.count(name) > 1})
        if duplicates:
            raise invalid_argument(f"duplicate output tensor alias: {', '.join(duplicates)}")
        result = await self._service.infer(
            ref,
            lambda _: {alias: to_array(alias, t) for alias, t in request.inputs.items()},
            signature_name=protos.signature_name(request.model_spec),
            output_names=wanted or None,
            method="predict",
            deadline=grpc_deadline(context),
        )
        response = predict_pb2.PredictResponse(model_spec=_served_spec(result))
        for alias, array in result.outputs.items():
            write_tensor_proto(response.outputs[alias], alias, array)
        return response

    @_rpc
    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        examples = protos.serialized_examples(request.input)
        ref = _routed_ref(request, context)
        result = await self._examples(ref, request, examples, CLASSIFY_METHOD, context)
        return classification_pb2.ClassificationResponse(
            model_spec=_served_spec(result),
            result=protos.classification_result(result.outputs, len(examples)),
        )

    @_rpc
    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        examples = protos.serialized_examples(request.input)
        ref = _routed_ref(request, context)
        result = await self._examples(ref, request, examples, REGRESS_METHOD, context)
        return regression_pb2.RegressionResponse(
            model_spec=_served_spec(result),
            result=protos.regression_result(result.outputs, len(examples)),
        )

    @_rpc
    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        """Every task runs against the version the first task's ModelSpec resolves to."""
        _check_tasks(request.tasks)
        examples = protos.serialized_examples(request.input)
        response = inference_pb2.MultiInferenceResponse()
        ref = _routed_ref(request.tasks[0], context)
        for task in request.tasks:
            result = await self._examples(ref, task, examples, task.method_name, context)
            ref = ModelRef(result.model_name, result.version)
            answer = response.results.add(model_spec=_served_spec(result))
            if task.method_name == CLASSIFY_METHOD:
                answer.classification_result.CopyFrom(
                    protos.classification_result(result.outputs, len(examples))
                )
            else:
                answer.regression_result.CopyFrom(
                    protos.regression_result(result.outputs, len(examples))
                )
        return response

    @_rpc
    async def GetModelMetadata(
        self,
        request: get_model_metadata_pb2.GetModelMetadataRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        if not request.metadata_field:
            raise invalid_argument(
                "GetModelMetadataRequest must specify at least one metadata_field"
            )
        for field in request.metadata_field:
            if field != _SIGNATURE_DEF:
                raise invalid_argument(f"Metadata field {field} is not supported")
        meta = await self._service.metadata(_routed_ref(request, context))
        response = get_model_metadata_pb2.GetModelMetadataResponse(
            model_spec=protos.model_spec(meta.name, meta.version)
        )
        response.metadata[_SIGNATURE_DEF].Pack(protos.signature_def_map(meta.signatures))
        return response

    async def _examples(
        self,
        ref: ModelRef,
        request: Any,
        examples: np.ndarray,
        method_name: str,
        context: grpc.aio.ServicerContext,
    ) -> InferenceResult:
        """Run a classify or regress signature on serialized tf.Examples."""

        def inputs(signature: SignatureSpec) -> dict[str, np.ndarray]:
            return {examples_input(signature, method_name): examples}

        return await self._service.infer(
            ref,
            inputs,
            signature_name=protos.signature_name(request.model_spec),
            method="classify" if method_name == CLASSIFY_METHOD else "regress",
            deadline=grpc_deadline(context),
        )


def _model_ref(request: Any) -> ModelRef:
    if not request.HasField("model_spec"):
        raise invalid_argument("Missing ModelSpec")
    return protos.model_ref(request.model_spec)


def _routed_ref(request: Any, context: grpc.aio.ServicerContext) -> ModelRef:
    """What the request's ModelSpec names, with the call's ``x-routing-key`` metadata."""
    ref = _model_ref(request)
    return ModelRef(ref.name, ref.version, ref.label, routing_key(context))


def _served_spec(result: InferenceResult) -> Any:
    return protos.model_spec(result.model_name, result.version, result.signature.name)


def _check_tasks(tasks: Any) -> None:
    """TF Serving's rules: at least one task, one model, distinct signatures, and only the
    classify and regress methods."""
    if not tasks:
        raise invalid_argument("MultiInferenceRequest must specify at least one task.")
    signatures: set[str] = set()
    for task in tasks:
        if task.model_spec.name != tasks[0].model_spec.name:
            raise invalid_argument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        name = protos.signature_name(task.model_spec)
        if name in signatures:
            raise invalid_argument(f"Duplicate evaluation of signature: {name}")
        signatures.add(name)
        if task.method_name not in (CLASSIFY_METHOD, REGRESS_METHOD):
            raise unimplemented(f"Unsupported signature method_name: {task.method_name}")


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ServingService) -> None:
        self._service = service

    @_rpc
    async def GetModelStatus(
        self,
        request: get_model_status_pb2.GetModelStatusRequest,
        context: grpc.aio.ServicerContext,
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """Every version's state, or one version's (a label is resolved to its version)."""
        ref = _model_ref(request)
        if ref.label is not None:
            ref = ModelRef(ref.name, self._service.resolve_version(ref))
        return protos.status_response(self._service.status(ref.name, ref.version))

    @_rpc
    async def HandleReloadConfigRequest(
        self,
        request: model_management_pb2.ReloadConfigRequest,
        context: grpc.aio.ServicerContext,
    ) -> model_management_pb2.ReloadConfigResponse:
        """Serve exactly the models of ``request.config``; answer once new models have loaded.

        An unset config changes nothing (as in TF Serving). New models load eagerly; models
        already served keep their load mode, runtime and batching. A new model that does not
        become available fails the call with UNKNOWN, as TF Serving's does. Needs the admin
        token in ``authorization`` metadata, even for a call that changes nothing.
        """
        token = authorization(context)
        self._service.management.authorize(token)
        if request.config.WhichOneof("config") is None:
            return model_management_pb2.ReloadConfigResponse(status=protos.status_proto())
        names = [model.name for model in request.config.model_config_list.config]
        for name in names:
            if names.count(name) > 1:
                raise invalid_argument(f"Illegal to list model {name} multiple times in config")
        current = {config.name: config for config in self._service.model_configs()}
        configs = [
            _keep_own_settings(config, current.get(config.name))
            for config in models_from_tfs_message(request.config, Path.cwd(), "eager")
        ]
        await self._service.reconfigure(configs, token)
        failed = [self._unavailable(c.name) for c in configs if c.name not in current]
        problems = [problem for problem in failed if problem]
        if problems:
            raise ServingError(
                ErrorKind.UNKNOWN,
                f"Some models did not become available: {{{', '.join(problems)}}}",
            )
        return model_management_pb2.ReloadConfigResponse(status=protos.status_proto())

    def _unavailable(self, name: str) -> str:
        """Why a newly added model has no available version ("" if it has one)."""
        try:
            statuses = self._service.status(name)
        except ServingError as exc:
            return f"{name}: {exc.message}"
        if any(s.state == "AVAILABLE" for s in statuses):
            return ""
        return "; ".join(f"{name} version {s.version}: {s.error_message}" for s in statuses)


def _keep_own_settings(config: ModelConfig, current: ModelConfig | None) -> ModelConfig:
    """``config`` with the settings a TF Serving config cannot express taken from the model's
    current config, if it is already served (so an unchanged entry is not reloaded)."""
    if current is None:
        return config
    return config.model_copy(update={name: getattr(current, name) for name in _TFMUX_ONLY})
