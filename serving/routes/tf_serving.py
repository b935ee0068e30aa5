"""TF Serving's REST API (/v1): model status, metadata and :predict, each on
/v1/models/{name} and /v1/models/{name}/versions/{version}."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .. import payloads
from ..errors import ApiError, excerpt
from ..schemas import ModelMetadataResponse, ModelStatusResponse, PredictResponse
from ..similar import describe_for_status
from ..state import ERRORS, State, Target, get_state, json_body, require_json, requested_version, resolve_model, versioned

router = APIRouter(tags=["TF Serving"])

TF_DTYPES = {"string": "DT_STRING", "float32": "DT_FLOAT", "float16": "DT_HALF", "float64": "DT_DOUBLE", "bfloat16": "DT_BFLOAT16"}


def _tf_tensor(t, placeholder: str) -> dict:
    dims = [] if t.shape is None else [{"size": str(-1 if d is None else d), "name": ""} for d in t.shape]
    return {
        "dtype": TF_DTYPES.get(t.dtype, "DT_INVALID"),
        "tensor_shape": {"dim": dims, "unknown_rank": t.shape is None},
        "name": placeholder,
    }


@versioned(router.get, "/v1/models/{name}{v}", response_model=ModelStatusResponse, responses=ERRORS,
           response_model_exclude_none=True)
async def tf_model_status(name: str, request: Request, state: State = Depends(get_state)):
    # Status lists every version the server knows (refused ones too), so it does not
    # resolve to the served model.
    config, version = state.config, requested_version(request)
    if name != config.model_name:
        raise ApiError(404, f"model {excerpt(name)} not found; this server serves '{config.model_name}'")
    states = state.repository.states()
    if version is not None:
        states = [s for s in states if str(s.version) == version]
        if not states:
            raise ApiError(404, f"version {excerpt(version)} of model '{name}' not found")
    return {"model_version_status": [
        {"version": str(s.version), "state": s.state,
         "status": {"error_code": "OK" if not s.error else "UNKNOWN", "error_message": s.error},
         # the served version's case index, with why it is not loaded (serving.similar)
         "similar_index": describe_for_status(state.similar, s.version) if s.state == "AVAILABLE" else None}
        for s in states
    ]}


@versioned(router.get, "/v1/models/{name}{v}/metadata", response_model=ModelMetadataResponse, responses=ERRORS)
async def tf_model_metadata(target: Target = Depends(resolve_model)):
    model = target.model
    return {
        "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {model.input.name: _tf_tensor(model.input, f"serving_default_{model.input.name}:0")},
            "outputs": {model.output.name: _tf_tensor(model.output, "StatefulPartitionedCall:0")},
            "method_name": "tensorflow/serving/predict",
            "defaults": {},
        }}}},
    }


@versioned(router.post, "/v1/models/{name}{v}:predict", response_model=PredictResponse, responses=ERRORS,
           openapi_extra=json_body("PredictRequest"))
async def tf_model_predict(request: Request, target: Target = Depends(resolve_model),
                           state: State = Depends(get_state)):
    config = state.config
    require_json(request)
    body = await request.body()
    images, form = await state.offload(
        payloads.parse_predict, body, target.model.input.name, config.max_images, config.max_pixels
    )
    pred = await state.run(images, target.pinned)
    return JSONResponse(payloads.predict_response(pred.probabilities, form))
