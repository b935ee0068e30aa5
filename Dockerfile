# tfmicle model server: `python -m serving` over a TF-Serving-style model repository.
#
#   docker build -t tfmicle-serving .
#   docker run --rm -p 8000:8000 -v "$PWD/models/cxr:/models/model:ro" \
#       -e SERVING_API_KEY=change-me tfmicle-serving
#
# Mount the repository (<name>/<version>/saved_model.pb) under /models; new version
# folders are picked up without a restart.
# An existing TF Serving repository (version folders without published.json) works as it
# is: a version without the marker is served once it holds saved_model.pb and variables/
# and none of its files has changed for --settle-seconds (10; a folder already that old
# at start-up at once). A :ro mount cannot be published into: for the exact rule, run
# 'python -m tfmicle.model_format publish models/cxr' on the host before mounting (it
# writes the marker in every complete version), then add --require-published.
#
# Build rules (tests/test_packaging.py checks them; hadolint-clean):
# - the base image by exact tag (the Python the constraints were made with);
# - the serving dependencies only (docker/requirements-serving.txt: no matplotlib,
#   tensorboard or other training packages), each at the version docker/constraints.txt
#   pins (regenerate: .venv/bin/python docker/pin.py > docker/constraints.txt);
# - dependencies before the source, so a code change rebuilds one small layer;
# - the code is not pip-installed (no build backend to fetch): PYTHONPATH=/app;
# - a numeric non-root user.
# Expected size: about 1.7 GB uncompressed: python:3.11.7-slim-bookworm (about 130 MB)
# plus the pinned packages, 1.5 GiB installed (tensorflow-cpu 1.3 GiB of it). An estimate
# from the installed files of .venv: no image was built (no Docker engine on these
# machines), so the compressed size is not known.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONPATH=/app \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=1

WORKDIR /app
COPY docker/requirements-serving.txt docker/constraints.txt /tmp/pip/
RUN pip install --no-cache-dir -r /tmp/pip/requirements-serving.txt -c /tmp/pip/constraints.txt \
    && rm -rf /tmp/pip \
    && groupadd --system --gid 10001 serving \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin serving \
    && mkdir -p /models \
    && chown 10001:10001 /models

COPY LICENSE NOTICE ./
COPY tfmicle ./tfmicle
COPY serving ./serving

USER 10001:10001
VOLUME ["/models"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2).status == 200 else 1)"]

ENTRYPOINT ["python", "-m", "serving", "--host", "0.0.0.0", "--port", "8000"]
CMD ["--model-base-path", "/models/model"]
