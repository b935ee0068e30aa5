"""The model card of the served version (tfmicle.model_card: model_card.json and .md,
written by tfmicle.export beside the model): GET /v1/models/{name}/card and
/v1/models/{name}/versions/{version}/card. JSON by default; ``?format=md`` gives the
markdown (a query parameter rather than Accept negotiation: a link or a browser can
ask for either). A version without a card is a JSON 404."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response

from tfmicle.model_card.store import CardUnreadable, read_card, read_markdown

from ..errors import ApiError
from ..state import ERRORS, Target, resolve_model, versioned

router = APIRouter(tags=["Model card"])
MARKDOWN = "text/markdown; charset=utf-8"
CARD_RESPONSES = {**ERRORS, 200: {"description": "the card", "content": {
    "application/json": {"schema": {"type": "object"}}, "text/markdown": {"schema": {"type": "string"}}}}}


@versioned(router.get, "/v1/models/{name}{v}/card", responses=CARD_RESPONSES,
           summary="The model card of the served version (JSON, or markdown with ?format=md)")
def model_card(target: Target = Depends(resolve_model),
               format: Literal["json", "md"] = Query("json", description="json (Model Card Toolkit "
                                                     "field names) or md (model_card.md)")):
    # a plain def: FastAPI runs it in its thread pool, so reading the files (maybe from an
    # object store) never blocks the event loop
    model = target.model
    try:
        if format == "md":
            text = read_markdown(model.path)
            if text is not None:
                return Response(text, media_type=MARKDOWN)
        else:
            card = read_card(model.path)
            if card is not None:
                return JSONResponse(card)
    except CardUnreadable as e:
        raise ApiError(500, f"the model card of version {model.version} is unreadable: {e}") from None
    raise ApiError(404, f"version {model.version} of model '{model.name}' has no model card "
                        "(exported before tfmicle wrote cards, or made by another tool)")
