"""`python -m serving`: a FastAPI service over a TF-Serving-style model repository.

Routes: POST /classify, TF Serving REST (/v1/models/...), Open Inference
Protocol v2 (/v2/...), GET /metrics. See ``serving.app.create_app``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "ServingConfig", "create_app"]


def __getattr__(name):  # keep `import serving` light: FastAPI/TF load on first use
    if name == "ServingConfig":
        from .config import ServingConfig

        return ServingConfig
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
