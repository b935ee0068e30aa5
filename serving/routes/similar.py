"""POST /similar: one case (one or more images, as /classify takes them) -> the k
nearest reference cases of the served version's case index (serving.similar)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from .. import similar
from ..schemas import SimilarResponse
from ..state import SIMILAR_ERRORS, State, get_state
from .classify import CLASSIFY_BODY, read_case

router = APIRouter()


@router.post("/similar", response_model=SimilarResponse, responses=SIMILAR_ERRORS, openapi_extra=CLASSIFY_BODY,
             summary="The k reference cases most similar to one case (one or more images)")
async def similar_cases(request: Request,
                        k: int = Query(5, ge=1, le=similar.MAX_K, description="reference cases to return"),
                        state: State = Depends(get_state)):
    model = state.resolve(state.config.model_name)[0]
    index = similar.require_index(state.similar, model)  # 409 before reading the body
    images, _ = await read_case(request, state)
    _, embeddings = await state.offload(similar.run_outputs, model, images)
    state.metrics.images.inc(len(images))
    fields = similar.check_fields(state.config.similar_fields)
    block = await state.offload(similar.similar_block, index, embeddings, k, fields)
    return JSONResponse({"model_name": model.name, "model_version": model.version, **block})
