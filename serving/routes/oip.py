"""Open Inference Protocol v2 (/v2): server metadata, health, model metadata and
readiness, and infer (JSON or the binary tensor extension), each model route on
/v2/models/{name} and /v2/models/{name}/versions/{version}."""

from __future__ import annotations

import json

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tfmicle.model_format import parse_uint

from .. import __version__, payloads
from ..errors import ApiError
from ..schemas import (InferResponse, LiveResponse, ModelReadyResponse, ReadyResponse, V2ModelMetadata,
                       V2ServerMetadata)
from ..state import ERRORS, SERVER_NAME, State, Target, get_state, json_body, require_json, resolve_model, versioned

router = APIRouter(tags=["Open Inference Protocol v2"])

V2_DTYPES = {"string": "BYTES", "float32": "FP32", "float16": "FP16", "float64": "FP64", "bfloat16": "BF16"}


def _v2_tensor(t, datatype: str | None = None) -> dict:
    shape = [-1] if t.shape is None else [-1 if d is None else d for d in t.shape]
    return {"name": t.name, "datatype": datatype or V2_DTYPES.get(t.dtype, t.dtype.upper()), "shape": shape}


@router.get("/v2", response_model=V2ServerMetadata)
async def v2_server_metadata():
    return {"name": SERVER_NAME, "version": __version__, "extensions": ["binary_tensor_data"]}


@router.get("/v2/health/live", response_model=LiveResponse)
async def v2_live():
    return {"live": True}


@router.get("/v2/health/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}})
async def v2_ready(state: State = Depends(get_state)):
    ready = state.repository.current is not None and state.batcher.running
    return JSONResponse({"ready": ready}, status_code=200 if ready else 503)


@versioned(router.get, "/v2/models/{name}{v}", response_model=V2ModelMetadata, responses=ERRORS)
async def v2_model_metadata(target: Target = Depends(resolve_model)):
    model = target.model
    return {
        "name": model.name,
        "versions": [str(model.version)],
        "platform": "tensorflow_savedmodel",
        "inputs": [_v2_tensor(model.input, "BYTES")],
        "outputs": [_v2_tensor(model.output, "FP32")],
    }


@versioned(router.get, "/v2/models/{name}{v}/ready", response_model=ModelReadyResponse, responses=ERRORS)
async def v2_model_ready(target: Target = Depends(resolve_model)):
    return {"name": target.model.name, "ready": True}


@versioned(router.post, "/v2/models/{name}{v}/infer", response_model=InferResponse, responses=ERRORS,
           openapi_extra=json_body("InferRequest"))
async def v2_model_infer(request: Request, target: Target = Depends(resolve_model),
                         state: State = Depends(get_state)) -> Response:
    config, model = state.config, target.model
    header_text = request.headers.get("inference-header-content-length")
    if header_text is not None:
        header_length = parse_uint(header_text.strip())
        if header_length is None:
            raise ApiError(400, "Inference-Header-Content-Length must be a non-negative integer")
        body = await request.body()
        req, images = await state.offload(
            payloads.parse_infer_binary, body, header_length, model, config.max_images, config.max_pixels
        )
    else:
        require_json(request)
        body = await request.body()
        req, images = await state.offload(
            payloads.parse_infer_json, body, model, config.max_images, config.max_pixels
        )
    pred = await state.run(images, target.pinned)
    resp, raw = payloads.infer_response(req, pred.model, pred.probabilities)
    if raw is None:
        return JSONResponse(resp)
    header = json.dumps(resp, separators=(",", ":")).encode()
    return Response(header + raw, media_type="application/octet-stream",
                    headers={"Inference-Header-Content-Length": str(len(header))})
