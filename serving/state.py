"""What every route shares: the server's State (config, model repository, metrics,
batcher, decode pool) and the FastAPI dependencies that hand it to a route, with the
model a request names resolved once (``resolve_model``) for both the unversioned and
the versioned paths. Map: docs/architecture.md."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable

from fastapi import Depends, Path, Request

from .batcher import Batcher
from .config import ServingConfig
from .errors import ApiError
from .metrics import Metrics
from .model import ServedModel
from .repository import ModelRepository
from .schemas import ErrorResponse

SERVER_NAME = "tfmicle-serving"
JSON_TYPES = {"", "application/json", "text/plain", "application/x-www-form-urlencoded"}  # curl -d sends the last
ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 415, 422, 503)}
VERSION_SEGMENT = "/versions/{version}"


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
        raise ApiError(415, f"unsupported Content-Type '{mt}'; send application/json")


def json_body(model: str) -> dict:
    """openapi_extra for a route that reads a JSON body of a schemas model itself."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref(model)}}}}


def ref(model: str) -> dict:
    return {"$ref": f"#/components/schemas/{model}"}
