#!/usr/bin/env bash
# The whole test suite on another torch release, in its own virtual environment (README: supported torch).
# Usage: bash tests/other_torch.sh TORCH TORCHVISION [VENV]   e.g. bash tests/other_torch.sh 2.5.1 0.20.1
# Needs PyPI (a CUDA build of torch is several GB); CI does not run it. The rest of requirements.txt is
# installed at its pins beside the chosen torch.
set -euo pipefail
cd "$(dirname "$0")/.."
torch_version="$1"
vision_version="$2"
venv="${3:-.venv-torch-$torch_version}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q "torch==$torch_version" "torchvision==$vision_version"
grep -v -E '^(torch|torchvision)==' requirements.txt > "$venv/requirements-rest.txt"
"$venv/bin/pip" install -q -r "$venv/requirements-rest.txt"
"$venv/bin/python" -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__)"
"$venv/bin/python" -m pytest -q -n 2 -p no:cacheprovider
