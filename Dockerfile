# tfmicle model server: `python -m serving` over a TF-Serving-style model repository.
#
#   docker build -t tfmicle-serving .
#   docker run --rm -p 8000:8000 -v "$PWD/models/cxr:/models/cxr:ro" \
#       -e SERVING_API_KEY=change-me tfmicle-serving --model-base-path /models/cxr
#
# Mount the repository (<name>/<version>/saved_model.pb) under /models; new
# version folders are picked up without a restart.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /app
COPY setup.cfg pyproject.toml README.md ./
COPY tfmicle ./tfmicle
COPY data_prep ./data_prep
COPY serving ./serving
RUN pip install ".[serve]" \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin serving \
    && mkdir -p /models && chown serving /models

USER serving
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model-base-path", "/models/model"]
