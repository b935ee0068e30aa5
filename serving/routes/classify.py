"""POST /classify: one case (one or more images, multipart ``files`` or JSON base64)
-> top-k labels per image and for the case; with ``similar=k``, the k most similar
reference cases too (serving.similar). ``read_case`` reads such a body for /similar."""

from __future__ import annotations

from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from .. import payloads, similar
from ..errors import ApiError, excerpt
from ..schemas import ClassifyResponse
from ..state import SIMILAR_ERRORS, State, get_state, media_type, ref

router = APIRouter()

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
            "application/json": {"schema": ref("ClassifyRequest")},
        },
    }
}


async def read_case(request: Request, state: State) -> tuple[list[bytes], list[str | None] | None]:
    """The images of one case from a /classify or /similar body (multipart ``files`` or
    JSON base64), checked in the decode pool -> (encoded images, file names or None)."""
    config = state.config
    mt = media_type(request)
    if mt == "multipart/form-data":
        async with request.form(max_files=config.max_images, max_fields=16) as form:
            files = [f for f in form.getlist("files") if isinstance(f, UploadFile)]
            if not files:
                raise ApiError(400, "no images: send one or more files in the multipart field 'files'")
            payloads.check_count(len(files), config.max_images)
            raw = [await f.read() for f in files]
            filenames: list[str | None] = [f.filename for f in files]
        return await state.offload(payloads.check_images, raw, config.max_pixels), filenames
    if mt in ("application/json", "") or mt.endswith("+json"):
        body = await request.body()
        if not body and mt == "":
            raise ApiError(400, "empty body: send multipart 'files' or JSON {\"images\": [<base64>, ...]}")
        return await state.offload(payloads.parse_classify_json, body, config.max_images, config.max_pixels), None
    raise ApiError(415, f"unsupported Content-Type {excerpt(mt)}; send multipart/form-data or application/json")


@router.post("/classify", response_model=ClassifyResponse, responses=SIMILAR_ERRORS, openapi_extra=CLASSIFY_BODY,
             summary="Classify one case (one or more images)")
async def classify(request: Request, top_k: int = Query(5, ge=1, le=1000, description="labels per result"),
                   explain: bool = Query(False, description="add a Grad-CAM overlay (base64 PNG) and its peak per "
                                                         "image; costs a backward pass, not batched"),
                   similar_k: Optional[int] = Query(None, alias="similar", ge=1, le=similar.MAX_K,
                                                    description="add the k most similar reference cases of the "
                                                    "served version's case index (409 without one)"),
                   state: State = Depends(get_state)):
    model = index = None
    if similar_k is not None:  # the version and its index, taken once; 409 before reading the body
        model = state.resolve(state.config.model_name)[0]
        index = similar.require_index(state.similar, model)
    images, filenames = await read_case(request, state)
    if explain:
        body = await _explained(state, images, top_k, filenames)
        if model is not None and index is not None:
            _, embeddings = await state.offload(similar.run_outputs, model, images)
            body["similar"] = await _similar(state, index, embeddings, similar_k)
        return JSONResponse(body)
    if model is not None and index is not None:
        # one model call gives the probabilities and the embedding, so both come from one version
        probs, embeddings = await state.offload(similar.run_outputs, model, images)
        state.metrics.images.inc(len(images))
        body = payloads.classify_response(model, probs, top_k, filenames)
        body["similar"] = await _similar(state, index, embeddings, similar_k)
        return JSONResponse(body)
    pred = await state.run(images)
    return JSONResponse(payloads.classify_response(pred.model, pred.probabilities, top_k, filenames))


async def _similar(state: State, index: similar.IndexState, embeddings: np.ndarray, k: int) -> dict:
    """The search, in the pool (exact search over a large index takes a while)."""
    fields = similar.check_fields(state.config.similar_fields)
    return await state.offload(similar.similar_block, index, embeddings, k, fields)


async def _explained(state: State, images: list[bytes], top_k: int, filenames: list[str | None] | None) -> dict:
    """explain=1: the served version's serving_explain (probabilities and heatmaps from one
    call, so they agree), outside the batcher, in the pool; counted on its own."""
    model, _ = state.resolve(state.config.model_name)
    if not model.can_explain:
        raise ApiError(400, f"explain=1: version {model.version} of '{model.name}' was exported without the "
                            "'serving_explain' signature; re-export it with a current tfmicle.export, or omit explain")
    state.metrics.explain_requests.inc()
    body = await state.offload(payloads.explained_response, model, images, top_k, filenames)
    state.metrics.explain_images.inc(len(images))
    state.metrics.images.inc(len(images))
    return body
