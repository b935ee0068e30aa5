"""What every route shares: the server's State (config, model repository, metrics,
batcher, decode pool) and the FastAPI dependencies that hand it to a route, with the
model a request names resolved once (``resolve_model``) for both the unversioned and
the versioned paths. Map: docs/architecture.md."""

from __future__ import annotations

import asyncio
import logging
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Depends, Path, Request

from tfmicle.model_format import parse_uint

from .batcher import Batcher
from .config import ServingConfig
from .errors import ApiError, excerpt
from .metrics import Metrics
from .model import ServedModel
from .repository import ModelRepository
from .schemas import ErrorResponse
from .similar import SimilarIndexes

log = logging.getLogger(__name__)

SERVER_NAME = "tfmicle-serving"
# What a parser of client input may raise on input nobody foresaw; offload() maps these
# to a 400 (real server faults, e.g. MemoryError or the model's own errors, stay 5xx).
PARSE_ERRORS = (ValueError, TypeError, LookupError, ArithmeticError, RecursionError, struct.error)
JSON_TYPES = {"", "application/json", "text/plain", "application/x-www-form-urlencoded"}  # curl -d sends the last
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
SIMILAR_ERRORS = {**ERRORS, 409: {"model": ErrorResponse, "description": "no case index for the served version"}}
VERSION_SEGMENT = "/versions/{version}"


@dataclass
class State:
    config: ServingConfig
    repository: ModelRepository
    metrics: Metrics
    batcher: Batcher
    similar: SimilarIndexes | None = None  # the case index of each loaded version
    pool: ThreadPoolExecutor | None = None

    async def offload(self, fn: Callable, *args: Any) -> Any:
        """Runs a parser of client input (serving.payloads) in the decode pool. Its
        refusals are ApiErrors; anything else it raises on odd input is a parser gap,
        logged as such and answered 400, never 500."""
        assert self.pool is not None
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        except ApiError as e:
            self.metrics.invalid_requests.labels(str(e.status)).inc()
            raise
        except PARSE_ERRORS as e:
            log.error("parser gap: %s raised %s on client input; answered 400", getattr(fn, "__name__", fn),
                      type(e).__name__, exc_info=e)
            self.metrics.invalid_requests.labels("400").inc()
            raise ApiError(400, f"could not parse the request ({type(e).__name__})") from None

    def resolve(self, name: str, version: str | None = None) -> tuple[ServedModel, int | None]:
        if name != self.config.model_name:
            raise ApiError(404, f"model {excerpt(name)} not found; this server serves '{self.config.model_name}'")
        model = self.repository.current
        if model is None:
            raise ApiError(503, "no model version is loaded")
        if version is None:
            return model, None
        v = parse_uint(version)
        if v is None:
            raise ApiError(404, f"version {excerpt(version)} of model '{name}' not found (versions are integers)")
        if v != model.version:
            raise ApiError(404, f"version {v} of model '{name}' is not served (serving version {model.version})")
        return model, v

    async def run(self, images: list[bytes], version: int | None = None) -> Any:
        pred = await self.batcher.predict(images, version)
        self.metrics.images.inc(len(images))
        return pred


@dataclass(frozen=True)
class Target:
    """The model version a request addressed: the served model, and the version the
    path pinned (None on an unversioned path)."""

    model: ServedModel
    pinned: int | None


def get_state(request: Request) -> State:
    return request.app.state.serving


def requested_version(request: Request) -> str | None:
    """{version} of a versioned path, None on the unversioned one."""
    return request.path_params.get("version")


def resolve_model(name: str, request: Request, state: State = Depends(get_state)) -> Target:
    """Dependency: the model {name} (and {version}) of the path, or a JSON 404 / 503."""
    return Target(*state.resolve(name, requested_version(request)))


def _version_parameter(version: str = Path(description="model version (an integer)")) -> None:
    """Declares {version} on the versioned paths (docs, validation); routes read it
    through requested_version, so the unversioned path has no such parameter."""


def versioned(method: Callable, path: str, **kwargs: Any) -> Callable:
    """Declares one route for both its paths: ``path`` holds ``{v}`` where the versioned
    form has ``/versions/{version}``, e.g. ``/v2/models/{name}{v}/infer``."""

    def register(endpoint: Callable) -> Callable:
        method(path.replace("{v}", ""), **kwargs)(endpoint)
        extra = list(kwargs.pop("dependencies", [])) + [Depends(_version_parameter)]
        method(path.replace("{v}", VERSION_SEGMENT), dependencies=extra, **kwargs)(endpoint)
        return endpoint

    return register


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()[:100]


def require_json(request: Request) -> None:
    mt = media_type(request)
    if mt not in JSON_TYPES and not mt.endswith("+json"):
        raise ApiError(415, f"unsupported Content-Type {excerpt(mt)}; send application/json")


def json_body(model: str) -> dict:
    """openapi_extra for a route that reads a JSON body of a schemas model itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref(model)}}}}


def ref(model: str) -> dict:
    return {"$ref": f"#/components/schemas/{model}"}
