#!/usr/bin/env bash
# Creates benchmarks/.venv-tf, a separate virtual environment holding TensorFlow
# (with Keras 3) for the Keras/TF reference runs of the benchmarks.
# TensorFlow lives apart from the project venv so that it can never leak into
# hpctrain's own dependencies or tests.
#
# Usage: bash benchmarks/setup_tf_env.sh
# Override the interpreter or the TensorFlow requirement if needed:
#   PYTHON=python3.11 TF_REQUIREMENT='tensorflow==2.21.*' bash benchmarks/setup_tf_env.sh
set -euo pipefail

BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR="${BENCH_DIR}/.venv-tf"
PYTHON="${PYTHON:-python3}"
TF_REQUIREMENT="${TF_REQUIREMENT:-tensorflow==2.21.*}"

if [ ! -x "${VENV_DIR}/bin/python" ]; then
    "${PYTHON}" -m venv "${VENV_DIR}"
fi

"${VENV_DIR}/bin/python" -m pip install --upgrade pip
"${VENV_DIR}/bin/python" -m pip install "${TF_REQUIREMENT}" numpy

"${VENV_DIR}/bin/python" - <<'PY'
import keras
import tensorflow as tf
print(f"tensorflow {tf.__version__}, keras {keras.__version__}")
PY
