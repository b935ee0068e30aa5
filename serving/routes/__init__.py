"""One FastAPI APIRouter per API surface: classify (our /classify), similar (/similar), tf_serving (TF
Serving REST, /v1), card (/v1/models/{name}/card: the model card), oip (Open Inference
Protocol v2, /v2) and ops (/, /metrics).
serving.app includes them all. Map: docs/architecture.md."""

from . import card, classify, oip, ops, similar, tf_serving

ROUTERS = (classify.router, similar.router, tf_serving.router, card.router, oip.router, ops.router)

__all__ = ["ROUTERS"]
