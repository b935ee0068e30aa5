"""POST /classify: one case (one or more images, multipart ``files`` or JSON base64)
-> top-k labels per image and for the case."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from .. import payloads
from ..errors import ApiError, excerpt
from ..schemas import ClassifyResponse
from ..state import ERRORS, State, get_state, media_type, ref

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


@router.post("/classify", response_model=ClassifyResponse, responses=ERRORS, openapi_extra=CLASSIFY_BODY,
             summary="Classify one case (one or more images)")
async def classify(request: Request, top_k: int = Query(5, ge=1, le=1000, description="labels per result"),
                   state: State = Depends(get_state)):
    config = state.config
    mt = media_type(request)
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
        raise ApiError(415, f"unsupported Content-Type {excerpt(mt)}; send multipart/form-data or application/json")
    pred = await state.run(images)
    return JSONResponse(payloads.classify_response(pred.model, pred.probabilities, top_k, filenames))
