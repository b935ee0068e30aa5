"""One FastAPI APIRouter per API surface: classify (our /classify), similar (/similar), tf_serving (TF
Serving REST, /v1), oip (Open Inference Protocol v2, /v2) and ops (/, /metrics).
serving.app includes them all. Map: docs/architecture.md."""

from . import classify, oip, ops, similar, tf_serving

ROUTERS = (classify.router, similar.router, tf_serving.router, oip.router, ops.router)

__all__ = ["ROUTERS"]
