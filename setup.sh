#!/usr/bin/env bash
# Fresh-machine setup: system packages (Fashion-MNIST for the label-efficiency experiment;
# Chromium, run headless by the test that renders the server's /docs and /redoc), a
# virtualenv in .venv with tfmicle and its serve/demo/dev extras, and .venv-beam with the
# beam extra (kept apart: apache-beam pins protobuf < 7).
# Usage: bash setup.sh            (then: .venv/bin/python -m tfmicle.demo)
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT=()
[ -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] || APT+=(dataset-fashion-mnist)
command -v chromium >/dev/null || APT+=(chromium)
if [ ${#APT[@]} -gt 0 ] && command -v apt-get >/dev/null; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${APT[@]}" >/dev/null
fi
# PYTHON: any CPython 3.10-3.13 (tensorflow-cpu 2.21 has no cp314 wheel); apache-beam ships
# cp313 wheels too (2.78: 3.11-3.14), so .venv-beam uses the same interpreter.
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[serve,demo,dev,similar-ann]"
# Apache Beam (data_prep --runner beam) pins protobuf < 7: its own environment.
[ -x .venv-beam/bin/python ] || "$PY" -m venv .venv-beam
.venv-beam/bin/python -m pip install -q --upgrade pip
.venv-beam/bin/python -m pip install -q -e ".[beam]"
echo "setup done: $(.venv/bin/python -c 'import tensorflow as tf, keras; print("tensorflow", tf.__version__, "keras", keras.__version__)' 2>/dev/null)"
