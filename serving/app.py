"""The FastAPI app: the routers of serving.routes (/classify, TF Serving REST, Open
Inference Protocol v2, /metrics) over one State (serving.state), JSON errors, the
OpenAPI document, /docs and /redoc with self-hosted files (serving.docs) and the gateway
middleware.

Every route that runs the model goes through the one ``Batcher``; bodies are
read by the routes under the body limit and parsed, base64-decoded and image-
checked in a thread pool (``payloads``), never on the event loop.
Map: docs/architecture.md.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import __version__
from .batcher import Batcher
from .config import CONFIG_ENV, ServingConfig, setup_logging
from .docs import add_docs
from .errors import ApiError, bounded
from .metrics import Metrics
from .middleware import GatewayMiddleware
from .repository import ModelRepository
from .routes import ROUTERS
from .schemas import REQUEST_MODELS
from .similar import SimilarIndexes
from .state import State

log = logging.getLogger(__name__)


def create_app(config: ServingConfig, repository: ModelRepository | None = None) -> FastAPI:
    """Build the app. Loads the highest version now unless a loaded repository is given
    (raises repository.NoModelError when none loads)."""
    config.validate()
    metrics = Metrics()
    if repository is None:
        repository = ModelRepository(config.model_base_path, config.model_name, settle_seconds=config.settle_seconds,
                                     require_published=config.require_published)
    similar = SimilarIndexes(repository.base_path, config.similar_index)

    def on_load(name: str, version: int, ok: bool) -> None:
        metrics.on_load(name, version, ok)
        similar.on_load(version, ok)  # before the swap: the new version comes with its index

    def on_states(name: str, states: list) -> None:
        metrics.on_states(name, states)
        current = repository.current
        similar.sync(current.version if current is not None else None)

    repository.on_load = on_load
    repository.on_states = on_states
    if repository.current is None:
        repository.load_initial()
    else:
        metrics.on_load(repository.name, repository.current.version, True)
        on_states(repository.name, repository.states())
    batcher = Batcher(
        lambda: repository.current, config.max_batch_size, config.batch_timeout_ms, config.max_queue_images, metrics
    )
    state = State(config, repository, metrics, batcher, similar)

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
            metrics.close()

    app = FastAPI(
        title="tfmicle serving",
        version=__version__,
        description=(
            "Image classification over versioned SavedModels: `/classify`, similar reference cases (`/similar`, "
            "`/classify?similar=k`), TF Serving REST (`/v1`), "
            "Open Inference Protocol v2 (`/v2`), Prometheus `/metrics`. Errors are JSON `{\"error\": ...}`."
        ),
        lifespan=lifespan,
        docs_url=None,  # serving.docs adds both pages with self-hosted files
        redoc_url=None,
    )
    app.state.serving = state

    # -- errors: always JSON {"error": ...}, never a traceback ----------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": bounded(exc.message)}, status_code=exc.status, headers=exc.headers or None)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        status, detail = exc.status_code, str(exc.detail)
        if status == 400 and detail.startswith("Too many files"):
            status, detail = 413, f"too many images in one request (limit {config.max_images}, --max-images)"
        return JSONResponse({"error": bounded(detail)}, status_code=status, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = []
        for e in exc.errors()[:3]:
            loc = [str(p) for p in e.get("loc", ())]
            where = f"{loc[0]} parameter {'.'.join(loc[1:])}" if loc and loc[0] in ("query", "path") else ".".join(loc)
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return JSONResponse({"error": bounded("; ".join(parts) or "invalid request")}, status_code=422)

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect):
        log.info("client disconnected during %s %s", request.method, request.url.path)
        return JSONResponse({"error": "client disconnected before the body was complete"}, status_code=400)

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception):
        log.error("unhandled error on %s %s: %s: %s", request.method, request.url.path, type(exc).__name__, exc,
                  exc_info=exc)
        # Starlette re-raises after this response and uvicorn then drops the connection:
        # say so, so a keep-alive client opens a new one instead of reading a reset.
        return JSONResponse({"error": "internal server error"}, status_code=500, headers={"Connection": "close"})

    for router in ROUTERS:
        app.include_router(router)
    add_docs(app)

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
                       max_body_bytes=config.max_body_bytes, body_timeout_s=config.body_timeout_s)
    return app


def create_app_from_env() -> FastAPI:
    """Factory for `--workers N`: each worker process reads the settings the CLI left in the environment."""
    import os

    from .protocol import configure

    config = ServingConfig.from_json(os.environ[CONFIG_ENV])
    setup_logging(config.log_level)
    configure(config.header_timeout_s, config.max_header_bytes)  # this worker's connections
    return create_app(config)
