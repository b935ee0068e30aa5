"""The FastAPI app: /classify, TF Serving REST, Open Inference Protocol v2, /metrics.

Every route that runs the model goes through the one ``Batcher``; bodies are
read by the routes under the body limit and parsed, base64-decoded and image-
checked in a thread pool (``payloads``), never on the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from pydantic.json_schema import models_json_schema
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import __version__
from . import payloads
from .batcher import Batcher
from .config import CONFIG_ENV, ServingConfig
from .errors import ApiError
from .metrics import Metrics
from .middleware import GatewayMiddleware
from .model import ServedModel
from .repository import ModelRepository
from .schemas import (
    REQUEST_MODELS, ClassifyResponse, ErrorResponse, InferResponse, LiveResponse, ModelMetadataResponse,
    ModelReadyResponse, ModelStatusResponse, PredictResponse, ReadyResponse, V2ModelMetadata, V2ServerMetadata,
)

log = logging.getLogger(__name__)

SERVER_NAME = "tfmicle-serving"
TF_DTYPES = {"string": "DT_STRING", "float32": "DT_FLOAT", "float16": "DT_HALF", "float64": "DT_DOUBLE", "bfloat16": "DT_BFLOAT16"}
V2_DTYPES = {"string": "BYTES", "float32": "FP32", "float16": "FP16", "float64": "FP64", "bfloat16": "BF16"}
JSON_TYPES = {"", "application/json", "text/plain", "application/x-www-form-urlencoded"}  # curl -d sends the last

ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}


def _ref(model: str) -> dict:
    return {"$ref": f"#/components/schemas/{model}"}


def _json_body(model: str) -> dict:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": _ref(model)}}}}


CLASSIFY_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["files"],
                }
            },
            "application/json": {"schema": _ref("ClassifyRequest")},
        },
    }
}


@dataclass
class State:
    config: ServingConfig
    repository: ModelRepository
    metrics: Metrics
    batcher: Batcher
    pool: ThreadPoolExecutor | None = None

    async def offload(self, fn: Callable, *args: Any) -> Any:
        assert self.pool is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except ApiError as e:
            self.metrics.invalid_requests.labels(str(e.status)).inc()
            raise

    def resolve(self, name: str, version: str | None = None) -> tuple[ServedModel, int | None]:
        if name != self.config.model_name:
            raise ApiError(404, f"model '{name}' not found; this server serves '{self.config.model_name}'")
        model = self.repository.current
        if model is None:
            raise ApiError(503, "no model version is loaded")
        if version is None:
            return model, None
        if not version.isdigit():
            raise ApiError(404, f"version '{version}' of model '{name}' not found (versions are integers)")
        v = int(version)
        if v != model.version:
            raise ApiError(404, f"version {v} of model '{name}' is not served (serving version {model.version})")
        return model, v

    async def run(self, images: list[bytes], version: int | None = None) -> Any:
        pred = await self.batcher.predict(images, version)
        self.metrics.images.inc(len(images))
        return pred


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()[:100]


def _require_json(request: Request) -> None:
    mt = _media_type(request)
    if mt not in JSON_TYPES and not mt.endswith("+json"):
        raise ApiError(415, f"unsupported Content-Type '{mt}'; send application/json")


def _tf_tensor(t, placeholder: str) -> dict:
    dims = [] if t.shape is None else [{"size": str(-1 if d is None else d), "name": ""} for d in t.shape]
    return {
        "dtype": TF_DTYPES.get(t.dtype, "DT_INVALID"),
        "tensor_shape": {"dim": dims, "unknown_rank": t.shape is None},
        "name": placeholder,
    }


def _v2_tensor(t, datatype: str | None = None) -> dict:
    shape = [-1] if t.shape is None else [-1 if d is None else d for d in t.shape]
    return {"name": t.name, "datatype": datatype or V2_DTYPES.get(t.dtype, t.dtype.upper()), "shape": shape}


def create_app(config: ServingConfig, repository: ModelRepository | None = None) -> FastAPI:
    """Build the app. Loads the highest version now unless a loaded repository is given
    (raises repository.NoModelError when none loads)."""
    config.validate()
    metrics = Metrics()
    if repository is None:
        repository = ModelRepository(config.model_base_path, config.model_name)
    repository.on_load = metrics.on_load
    if repository.current is None:
        repository.load_initial()
    else:
        metrics.on_load(repository.name, repository.current.version, True)
    batcher = Batcher(
        lambda: repository.current, config.max_batch_size, config.batch_timeout_ms, config.max_queue_images, metrics
    )
    state = State(config, repository, metrics, batcher)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        state.pool = ThreadPoolExecutor(max_workers=config.decode_threads, thread_name_prefix="serving-decode")
        await batcher.start()
        repository.start_polling(config.poll_seconds)
        try:
            yield
        finally:
            repository.stop_polling()
            await batcher.stop()
            state.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="tfmicle serving",
        version=__version__,
        description=(
            "Image classification over versioned SavedModels: `/classify`, TF Serving REST (`/v1`), "
            "Open Inference Protocol v2 (`/v2`), Prometheus `/metrics`. Errors are JSON `{\"error\": ...}`."
        ),
        lifespan=lifespan,
    )
    app.state.serving = state

    # -- errors: always JSON {"error": ...}, never a traceback ----------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        status, detail = exc.status_code, str(exc.detail)
        if status == 400 and detail.startswith("Too many files"):
            status, detail = 413, f"too many images in one request (limit {config.max_images}, --max-images)"
        return JSONResponse({"error": detail}, status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:3]:
            loc = [str(p) for p in e.get("loc", ())]
            where = f"{loc[0]} parameter {'.'.join(loc[1:])}" if loc and loc[0] in ("query", "path") else ".".join(loc)
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"error": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect):
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return JSONResponse({"error": "client disconnected before the body was complete"}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("unhandled error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                  exc_info=exc)
        return JSONResponse({"error": "internal server error"}, status_code=500)

    # -- our API -------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    async def root():
        model = repository.current
        return {"name": SERVER_NAME, "model_name": config.model_name,
                "model_version": model.version if model else None, "docs": "/docs"}

    @app.post("/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=CLASSIFY_BODY,
              summary="Classify one case (one or more images)")
    async def classify(request: Request, top_k: int = Query(5, ge=1, le=1000, description="labels per result")):
        mt = _media_type(request)
        filenames: list[str | None] | None = None
        if mt == "multipart/form-data":
            async with request.form(max_files=config.max_images, max_fields=16) as form:
                files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
                if not files:
                    raise ApiError(400, "no images: send one or more files in the multipart field 'files'")
                payloads.check_count(len(files), config.max_images)
                raw = [await f.read() for f in files]
                filenames = [f.filename for f in files]
            images = await state.offload(payloads.check_images, raw, config.max_pixels)
        elif mt in ("application/json", "") or mt.endswith("+json"):
            body = await request.body()
            if not body and mt == "":
                raise ApiError(400, "empty body: send multipart 'files' or JSON {\"images\": [<base64>, ...]}")
            images = await state.offload(payloads.parse_classify_json, body, config.max_images, config.max_pixels)
        else:
            raise ApiError(415, f"unsupported Content-Type '{mt}'; send multipart/form-data or application/json")
        pred = await state.run(images)
        return JSONResponse(payloads.classify_response(pred.model, pred.probabilities, top_k, filenames))

    # -- TF Serving REST --------------------------------------------------------------------
    def tf_status(name: str, version: str | None) -> dict:
        if name != config.model_name:
            raise ApiError(404, f"model '{name}' not found; this server serves '{config.model_name}'")
        states = repository.states()
        if version is not None:
            states = [s for s in states if str(s.version) == version]
            if not states:
                raise ApiError(404, f"version '{version}' of model '{name}' not found")
        return {"model_version_status": [
            {"version": str(s.version), "state": s.state,
             "status": {"error_code": "OK" if not s.error else "UNKNOWN", "error_message": s.error}}
            for s in states
        ]}

    @app.get("/v1/models/{name}", response_model=ModelStatusResponse, responses=ERRORS, tags=["TF Serving"])
    async def tf_model_status(name: str):
        return tf_status(name, None)

    @app.get("/v1/models/{name}/versions/{version}", response_model=ModelStatusResponse, responses=ERRORS,
             tags=["TF Serving"])
    async def tf_version_status(name: str, version: str):
        return tf_status(name, version)

    def tf_metadata(name: str, version: str | None) -> dict:
        model, _ = state.resolve(name, version)
        return {
            "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {"signature_def": {"signature_def": {"serving_default": {
                "inputs": {model.input.name: _tf_tensor(model.input, f"serving_default_{model.input.name}:0")},
                "outputs": {model.output.name: _tf_tensor(model.output, "StatefulPartitionedCall:0")},
                "method_name": "tensorflow/serving/predict",
                "defaults": {},
            }}}},
        }

    @app.get("/v1/models/{name}/metadata", response_model=ModelMetadataResponse, responses=ERRORS,
             tags=["TF Serving"])
    async def tf_model_metadata(name: str):
        return tf_metadata(name, None)

    @app.get("/v1/models/{name}/versions/{version}/metadata", response_model=ModelMetadataResponse,
             responses=ERRORS, tags=["TF Serving"])
    async def tf_version_metadata(name: str, version: str):
        return tf_metadata(name, version)

    async def tf_predict(request: Request, name: str, version: str | None) -> JSONResponse:
        model, pinned = state.resolve(name, version)
        _require_json(request)
        body = await request.body()
        images, form = await state.offload(
            payloads.parse_predict, body, model.input.name, config.max_images, config.max_pixels
        )
        pred = await state.run(images, pinned)
        return JSONResponse(payloads.predict_response(pred.probabilities, form))

    @app.post("/v1/models/{name}:predict", response_model=PredictResponse, responses=ERRORS,
              openapi_extra=_json_body("PredictRequest"), tags=["TF Serving"])
    async def tf_model_predict(name: str, request: Request):
        return await tf_predict(request, name, None)

    @app.post("/v1/models/{name}/versions/{version}:predict", response_model=PredictResponse, responses=ERRORS,
              openapi_extra=_json_body("PredictRequest"), tags=["TF Serving"])
    async def tf_version_predict(name: str, version: str, request: Request):
        return await tf_predict(request, name, version)

    # -- Open Inference Protocol v2 ----------------------------------------------------------------
    @app.get("/v2", response_model=V2ServerMetadata, tags=["Open Inference Protocol v2"])
    async def v2_server_metadata():
        return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/health/live", response_model=LiveResponse, tags=["Open Inference Protocol v2"])
    async def v2_live():
        return {"live": True}

    @app.get("/v2/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}},
             tags=["Open Inference Protocol v2"])
    async def v2_ready():
        ready = repository.current is not None and batcher.running
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    def v2_metadata(name: str, version: str | None) -> dict:
        model, _ = state.resolve(name, version)
        return {
            "name": model.name,
            "versions": [str(model.version)],
            "platform": "tensorflow_savedmodel",
            "inputs": [_v2_tensor(model.input, "BYTES")],
            "outputs": [_v2_tensor(model.output, "FP32")],
        }

    @app.get("/v2/models/{name}", response_model=V2ModelMetadata, responses=ERRORS,
             tags=["Open Inference Protocol v2"])
    async def v2_model_metadata(name: str):
        return v2_metadata(name, None)

    @app.get("/v2/models/{name}/versions/{version}", response_model=V2ModelMetadata, responses=ERRORS,
             tags=["Open Inference Protocol v2"])
    async def v2_version_metadata(name: str, version: str):
        return v2_metadata(name, version)

    @app.get("/v2/models/{name}/ready", response_model=ModelReadyResponse, responses=ERRORS,
             tags=["Open Inference Protocol v2"])
    async def v2_model_ready(name: str):
        model, _ = state.resolve(name, None)
        return {"name": model.name, "ready": True}

    @app.get("/v2/models/{name}/versions/{version}/ready", response_model=ModelReadyResponse, responses=ERRORS,
             tags=["Open Inference Protocol v2"])
    async def v2_version_ready(name: str, version: str):
        model, _ = state.resolve(name, version)
        return {"name": model.name, "ready": True}

    async def v2_infer(request: Request, name: str, version: str | None) -> Response:
        model, pinned = state.resolve(name, version)
        header_length = request.headers.get("inference-header-content-length")
        if header_length is not None:
            if not header_length.strip().isdigit():
                raise ApiError(400, "Inference-Header-Content-Length must be a non-negative integer")
            body = await request.body()
            req, images = await state.offload(
                payloads.parse_infer_binary, body, int(header_length), model, config.max_images, config.max_pixels
            )
        else:
            _require_json(request)
            body = await request.body()
            req, images = await state.offload(
                payloads.parse_infer_json, body, model, config.max_images, config.max_pixels
            )
        pred = await state.run(images, pinned)
        resp, raw = payloads.infer_response(req, pred.model, pred.probabilities)
        if raw is None:
            return JSONResponse(resp)
        header = json.dumps(resp, separators=(",", ":")).encode()
        return Response(header + raw, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(header))})

    @app.post("/v2/models/{name}/infer", response_model=InferResponse, responses=ERRORS,
              openapi_extra=_json_body("InferRequest"), tags=["Open Inference Protocol v2"])
    async def v2_model_infer(name: str, request: Request):
        return await v2_infer(request, name, None)

    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=InferResponse, responses=ERRORS,
              openapi_extra=_json_body("InferRequest"), tags=["Open Inference Protocol v2"])
    async def v2_version_infer(name: str, version: str, request: Request):
        return await v2_infer(request, name, version)

    # -- Prometheus ------------------------------------------------------------------------------------
    @app.get("/metrics", response_class=Response, tags=["monitoring"])
    async def prometheus_metrics():
        return Response(metrics.render(), media_type=metrics.content_type)

    def custom_openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS],
                                     ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {})
        components.setdefault("schemas", {}).update(defs.get("$defs", {}))
        if config.api_key:
            components["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
        app.openapi_schema = schema
        return schema

    app.openapi = custom_openapi  # type: ignore[method-assign]

    app.add_middleware(GatewayMiddleware, metrics=metrics, api_key=config.api_key,
                       max_body_bytes=config.max_body_bytes)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `--workers N`: each worker process reads the settings the CLI left in the environment."""
    import os

    from .__main__ import setup_logging

    config = ServingConfig.from_json(os.environ[CONFIG_ENV])
    setup_logging(config.log_level)
    return create_app(config)
