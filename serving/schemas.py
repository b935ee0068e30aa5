"""Pydantic models of every request and response body (they also make /docs).

Bodies are parsed by the routes themselves (streamed under the body limit,
decoded off the event loop) and validated with these models; the OpenAPI
document refers to them through ``openapi_extra``.
"""

from __future__ import annotations

from typing import Any, Optional, Union

from pydantic import BaseModel, ConfigDict, Field


class ErrorResponse(BaseModel):
    error: str = Field(description="What was wrong with the request; never contains the request's content.")


# -- /classify ---------------------------------------------------------------
class ClassifyRequest(BaseModel):
    """JSON form of POST /classify (the other form is multipart `files`)."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(
        min_length=1,
        description="One case: base64-encoded images (JPEG, PNG; DICOM, TIFF, BMP and WebP are converted to PNG "
        "on the server); standard or URL-safe alphabet; data URLs accepted.",
    )


class LabelScore(BaseModel):
    label: str
    score: float


class Peak(BaseModel):
    row: int = Field(description="Row of the heatmap's maximum in the model's input image (size x size).")
    col: int = Field(description="Column of the heatmap's maximum in the model's input image.")
    size: int = Field(description="Side of the model's input image: the centre crop of the upload, resized.")


class Explanation(BaseModel):
    label: str = Field(description="The class explained (the image's top class).")
    peak: Peak
    overlay_png: str = Field(description="Base64 PNG: the Grad-CAM heatmap over the model's input image.")


class ImageResult(BaseModel):
    index: int
    filename: Optional[str] = None
    top: list[LabelScore]
    explanation: Optional[Explanation] = Field(default=None, description="With explain=1 only.")


class CaseResult(BaseModel):
    num_images: int
    top: list[LabelScore] = Field(description="Top-k of the mean of the images' probabilities.")


class SimilarCase(BaseModel):
    rank: int
    case_id: Optional[str] = Field(default=None, description="Absent when --similar-fields leaves it out.")
    label: Optional[str] = None
    similarity: Optional[float] = Field(default=None, description="Cosine of the case embeddings, in [-1, 1].")
    metadata: Optional[dict[str, str]] = Field(default=None, description="The metadata columns the index kept.")


class SimilarBlock(BaseModel):
    k: int = Field(description="Cases returned: min(k asked, cases in the index).")
    index_cases: int
    num_images: int = Field(description="Images of the posted case; their mean L2-normalised embedding is the query.")
    cases: list[SimilarCase]


class ClassifyResponse(BaseModel):
    model_name: str
    model_version: int
    top_k: int
    images: list[ImageResult]
    case: CaseResult
    similar: Optional[SimilarBlock] = Field(default=None, description="With similar=k only.")


class SimilarResponse(SimilarBlock):
    model_name: str
    model_version: int


# -- TF Serving REST -----------------------------------------------------------
class B64Value(BaseModel):
    b64: str = Field(description="Base64-encoded JPEG or PNG (DICOM, TIFF, BMP, WebP: converted on the server).")


class PredictRequest(BaseModel):
    """TF Serving's predict body: `instances` (row format) or `inputs` (columnar)."""

    model_config = ConfigDict(extra="forbid")
    signature_name: Optional[str] = Field(default=None, description="Only 'serving_default' is served.")
    instances: Optional[list[Any]] = Field(
        default=None, description='[{"b64": "..."}, ...] or [{"images": {"b64": "..."}}, ...]'
    )
    inputs: Optional[Any] = Field(default=None, description='[{"b64": "..."}, ...] or {"images": [{"b64": "..."}, ...]}')


class PredictResponse(BaseModel):
    predictions: Optional[list[list[float]]] = Field(default=None, description="For `instances` requests.")
    outputs: Optional[list[list[float]]] = Field(default=None, description="For `inputs` requests.")


class VersionStatus(BaseModel):
    error_code: str
    error_message: str


class ModelVersionStatus(BaseModel):
    version: str
    state: str
    status: VersionStatus
    similar_index: Optional[dict[str, Any]] = Field(
        default=None, description="The served version's case index: state loaded / none / refused, the reason, size.")


class ModelStatusResponse(BaseModel):
    model_version_status: list[ModelVersionStatus]


class ModelMetadataResponse(BaseModel):
    model_spec: dict[str, Any]
    metadata: dict[str, Any]


# -- Open Inference Protocol v2 ----------------------------------------------------
class InferInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[dict[str, Any]] = None
    data: Optional[Union[list[Any], str]] = Field(
        default=None, description="BYTES elements: base64-encoded images (row-major, may be nested)."
    )


class RequestedOutput(BaseModel):
    name: str
    parameters: Optional[dict[str, Any]] = None


class InferRequest(BaseModel):
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    inputs: list[InferInput] = Field(min_length=1)
    outputs: Optional[list[RequestedOutput]] = None


class InferOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: Optional[dict[str, Any]] = None
    data: Optional[list[float]] = None


class InferResponse(BaseModel):
    model_name: str
    model_version: Optional[str] = None
    id: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    outputs: list[InferOutput]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class LiveResponse(BaseModel):
    live: bool


class ReadyResponse(BaseModel):
    ready: bool


class ModelReadyResponse(BaseModel):
    name: str
    ready: bool


REQUEST_MODELS = [ClassifyRequest, PredictRequest, InferRequest]
