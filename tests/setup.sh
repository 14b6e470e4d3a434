#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a .venv with a CPU build of torch and this package (editable, test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
# Pin torch first: an unpinned install can pull a multi-GB CUDA build.
pip "torch==${REFTOK_TORCH_VERSION:-2.13.0}"
pip -e '.[test]'
.venv/bin/python -c "import torch, onnxruntime, cv2, reftok_deploy"
