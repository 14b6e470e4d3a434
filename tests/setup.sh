#!/usr/bin/env bash
# Idempotent set-up on a fresh machine: a .venv with a CPU build of torch and this package (editable, test extras).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
pip() { .venv/bin/python -m pip install -q --disable-pip-version-check "$@"; }
# Pin torch first, as README's CPU install does: PyPI's Linux torch is the CUDA build (GBs of nvidia-*
# packages). PyTorch's CPU index is added when it answers (its 2.13.0+cpu outranks PyPI's 2.13.0); where it
# cannot be reached (this workplace's offline machines), the configured indexes hold a CPU wheel.
# REFTOK_TORCH_INDEX= (empty) skips the CPU index.
index=${REFTOK_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
if [ -n "$index" ] && ! .venv/bin/python -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)" \
    "$index/torch/" >/dev/null 2>&1; then
  index=""
fi
pip "torch==${REFTOK_TORCH_VERSION:-2.13.0}" ${index:+--extra-index-url "$index"}
pip -e '.[test]'
.venv/bin/python -c "import torch, onnxruntime, cv2, reftok_deploy"
