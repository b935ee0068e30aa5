"""Request bodies -> lists of checked image bytes; model rows -> response bodies.

Everything here is plain blocking Python: the routes run it in the decode
thread pool, so JSON parsing, base64 and image checks stay off the event loop.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ValidationError

from tfmicle.overlay import overlay_png, peak

from .batcher import _is_input_error
from .errors import ApiError, excerpt
from .images import decode_base64, validate_image
from .model import ServedModel
from .schemas import ClassifyRequest, InferRequest, PredictRequest


MAX_JSON_INT_DIGITS = 30  # more than any int64 / uint64 a client could mean; Python's own cap is 4300
MAX_SHAPE_RANK = 16  # OIP shapes; keeps math.prod of client numbers cheap


def _json_int(text: str) -> int:
    """json's parse_int: refuses integers no field here could hold before int() does
    work on them (int() of a 5,000-digit string raises a plain ValueError)."""
    if len(text.lstrip("-")) > MAX_JSON_INT_DIGITS:
        raise ApiError(400, f"malformed JSON: an integer with {len(text.lstrip('-'))} digits "
                            f"(at most {MAX_JSON_INT_DIGITS})")
    return int(text)


def validation_message(err: ValidationError, prefix: str = "") -> str:
    """Pydantic errors as one line, locations and messages only (never the input; a key
    the client invented shows as a short excerpt)."""
    parts = []
    for e in err.errors()[:3]:
        loc = ".".join(str(p) if len(str(p)) <= 32 else excerpt(str(p), 32) for p in e.get("loc", ())) or "body"
        parts.append(f"{prefix}{loc}: {e.get('msg', 'invalid')}")
    more = len(err.errors()) - len(parts)
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts)


def load_json(body: bytes) -> Any:
    if not body or not body.strip():
        raise ApiError(400, "empty body: send a JSON object")
    try:
        return json.loads(body, parse_int=_json_int)
    except UnicodeDecodeError:
        raise ApiError(400, "body is not UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    except ValueError as e:  # json's other refusals (e.g. Python's int digit limit)
        raise ApiError(400, f"malformed JSON: {type(e).__name__}") from None


def parse_model(cls: type[BaseModel], data: Any) -> Any:
    if not isinstance(data, dict):
        raise ApiError(422, f"body must be a JSON object, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ApiError(422, validation_message(e)) from None


def check_count(n: int, max_images: int) -> None:
    if n == 0:
        raise ApiError(400, "no images in the request")
    if n > max_images:
        raise ApiError(413, f"{n} images in one request, over the limit of {max_images} (--max-images)")


def check_images(images: Sequence[bytes], max_pixels: int) -> list[bytes]:
    """Each image checked (serving.images), as the model gets it: JPEG and PNG as sent,
    the other types converted to PNG."""
    single = len(images) == 1
    return [validate_image(img, max_pixels, None if single else i).data for i, img in enumerate(images)]


def decode_all(values: Sequence[Any], max_pixels: int) -> list[bytes]:
    single = len(values) == 1
    images = [decode_base64(v, None if single else i) for i, v in enumerate(values)]
    return check_images(images, max_pixels)


# -- /classify -----------------------------------------------------------------
def parse_classify_json(body: bytes, max_images: int, max_pixels: int) -> list[bytes]:
    data = load_json(body)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        check_count(len(data["images"]), max_images)  # before pydantic walks a huge list
    req = parse_model(ClassifyRequest, data)
    return decode_all(req.images, max_pixels)


def top_labels(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"label": labels[i], "score": float(probs[i])} for i in order]


def classify_response(model: ServedModel, probs: np.ndarray, top_k: int, filenames: Sequence[str | None] | None) -> dict:
    k = min(top_k, model.num_classes)
    images = []
    for i, row in enumerate(probs):
        item: dict[str, Any] = {"index": i, "top": top_labels(row, model.labels, k)}
        if filenames is not None:
            item["filename"] = filenames[i]
        images.append(item)
    mean = probs.astype(np.float64).mean(axis=0)
    return {
        "model_name": model.name,
        "model_version": model.version,
        "top_k": k,
        "images": images,
        "case": {"num_images": int(probs.shape[0]), "top": top_labels(mean, model.labels, k)},
    }


def explained_response(model: ServedModel, images: Sequence[bytes], top_k: int,
                       filenames: Sequence[str | None] | None) -> dict:
    """classify_response from serving_explain's probabilities, with per image the
    explanation (label, heatmap peak, base64 PNG overlay). Blocking: run it in the pool."""
    try:
        out = model.explain(images)
    except Exception as e:
        if _is_input_error(e):  # as the batcher answers it: the model could not decode an image
            raise ApiError(422, "the model could not decode an image") from None
        raise
    body = classify_response(model, out["probabilities"], top_k, filenames)
    heat, pixels, classes = out["heatmap"], out["pixels"], out["explained_class"]
    for item, h, px, c in zip(body["images"], heat, pixels, classes):
        r, col = peak(h)
        item["explanation"] = {
            "label": model.labels[int(c)], "peak": {"row": r, "col": col, "size": int(h.shape[0])},
            "overlay_png": base64.b64encode(overlay_png(px, h)).decode("ascii"),
        }
    return body


# -- TF Serving REST -------------------------------------------------------------
def _b64_of(value: Any, where: str, input_name: str) -> str:
    if isinstance(value, dict) and set(value) == {input_name}:
        value = value[input_name]
    if isinstance(value, dict) and set(value) == {"b64"}:
        return value["b64"]
    raise ApiError(400, f'{where}: expected {{"b64": "<base64 image>"}} (binary tensors must be base64 in TF Serving JSON)')


def parse_predict(body: bytes, input_name: str, max_images: int, max_pixels: int) -> tuple[list[bytes], str]:
    """-> (images, "instances" | "inputs")."""
    data = load_json(body)
    req: PredictRequest = parse_model(PredictRequest, data)
    if req.signature_name not in (None, "", "serving_default"):
        raise ApiError(400, f"unknown signature_name {excerpt(req.signature_name)}; only 'serving_default' is served")
    if (req.instances is None) == (req.inputs is None):
        raise ApiError(400, "send exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    if req.instances is not None:
        values, form = req.instances, "instances"
    else:
        values, form = req.inputs, "inputs"
        if isinstance(values, dict) and set(values) == {input_name}:
            values = values[input_name]
        if isinstance(values, dict) and set(values) == {"b64"}:
            raise ApiError(400, f"'inputs' for the 1-D input '{input_name}' must be a list of {{\"b64\": ...}}")
        if not isinstance(values, list):
            raise ApiError(400, f"'inputs' must be a list of {{\"b64\": ...}} or {{\"{input_name}\": [...]}}")
    check_count(len(values), max_images)
    b64 = [_b64_of(v, f"{form}[{i}]", input_name) for i, v in enumerate(values)]
    return decode_all(b64, max_pixels), form


def predict_response(probs: np.ndarray, form: str) -> dict:
    return {"predictions" if form == "instances" else "outputs": probs.tolist()}


# -- Open Inference Protocol v2 --------------------------------------------------------
def _flatten(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            out.append(item)
        else:
            stack.pop()
    return out


def _check_infer(req: InferRequest, model: ServedModel) -> tuple[Any, int]:
    if len(req.inputs) != 1:
        raise ApiError(400, f"this model takes exactly one input ('{model.input.name}', BYTES), got {len(req.inputs)}")
    inp = req.inputs[0]
    if inp.name != model.input.name:
        raise ApiError(400, f"unknown input {excerpt(inp.name)}; this model's input is '{model.input.name}' (BYTES)")
    if inp.datatype.upper() != "BYTES":
        raise ApiError(400, f"input '{inp.name}' must have datatype BYTES (base64-encoded images), "
                            f"got {excerpt(inp.datatype)}")
    if not inp.shape or len(inp.shape) > MAX_SHAPE_RANK or any(d < 0 for d in inp.shape):
        raise ApiError(400, f"input '{inp.name}' has an invalid shape {excerpt(inp.shape)} "
                            f"(1 to {MAX_SHAPE_RANK} non-negative sizes)")
    n = math.prod(inp.shape)
    for out in req.outputs or []:
        if out.name != model.output.name:
            raise ApiError(400, f"unknown output {excerpt(out.name)}; this model's output is '{model.output.name}'")
    return inp, n


def parse_infer_json(body: bytes, model: ServedModel, max_images: int, max_pixels: int) -> tuple[InferRequest, list[bytes]]:
    req: InferRequest = parse_model(InferRequest, load_json(body))
    inp, n = _check_infer(req, model)
    if inp.data is None:
        raise ApiError(400, f"input '{inp.name}' has no data")
    values = _flatten(inp.data)
    if len(values) != n:
        raise ApiError(400, f"input '{inp.name}' has shape {excerpt(inp.shape)} ({excerpt(n)} elements) "
                            f"but {len(values)} data elements")
    check_count(n, max_images)
    return req, decode_all(values, max_pixels)


def parse_infer_binary(body: bytes, header_length: int, model: ServedModel, max_images: int, max_pixels: int) -> tuple[InferRequest, list[bytes]]:
    """Binary tensor data extension: JSON header, then length-prefixed BYTES elements."""
    if header_length < 0 or header_length > len(body):
        raise ApiError(400, "Inference-Header-Content-Length is larger than the body")
    req: InferRequest = parse_model(InferRequest, load_json(body[:header_length]))
    inp, n = _check_infer(req, model)
    check_count(n, max_images)
    size = (inp.parameters or {}).get("binary_data_size")
    if size is None:  # JSON data in a binary request is allowed too
        if inp.data is None:
            raise ApiError(400, f"input '{inp.name}' has neither data nor binary_data_size")
        values = _flatten(inp.data)
        if len(values) != n:
            raise ApiError(400, f"input '{inp.name}' has shape {excerpt(inp.shape)} but {len(values)} data elements")
        return req, decode_all(values, max_pixels)
    blob = body[header_length:]
    if type(size) is not int or size != len(blob):
        raise ApiError(400, f"binary_data_size {excerpt(size)} does not match the {len(blob)} bytes after the header")
    images, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise ApiError(400, "truncated BYTES element length in binary data")
        (length,) = struct.unpack_from("<I", blob, pos)
        pos += 4
        if pos + length > len(blob):
            raise ApiError(400, "truncated BYTES element in binary data")
        images.append(blob[pos:pos + length])
        pos += length
    if len(images) != n:
        raise ApiError(400, f"input '{inp.name}' has shape {excerpt(inp.shape)} but {len(images)} binary elements")
    return req, check_images(images, max_pixels)


def wants_binary_output(req: InferRequest) -> bool:
    if req.outputs:
        return any(bool((o.parameters or {}).get("binary_data")) for o in req.outputs)
    return bool((req.parameters or {}).get("binary_data_output"))


def infer_response(req: InferRequest, model: ServedModel, probs: np.ndarray) -> tuple[dict, bytes | None]:
    """-> (JSON header, raw FP32 bytes or None when the data goes in the JSON)."""
    out: dict[str, Any] = {"name": model.output.name, "datatype": "FP32", "shape": list(probs.shape)}
    raw = None
    if wants_binary_output(req):
        raw = np.ascontiguousarray(probs, dtype="<f4").tobytes()
        out["parameters"] = {"binary_data_size": len(raw)}
    else:
        out["data"] = probs.reshape(-1).tolist()
    resp: dict[str, Any] = {"model_name": model.name, "model_version": str(model.version), "outputs": [out]}
    if req.id is not None:
        resp["id"] = req.id
    return resp, raw
