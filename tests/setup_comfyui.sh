#!/usr/bin/env bash
# Make a Python venv that runs a ComfyUI checkout on CPU torch, for tests/test_comfyui.py.
#
#   bash tests/setup_comfyui.sh COMFYUI_DIR [VENV_DIR]
#   COMFYUI_DIR=... FINEPHYS_COMFY_PYTHON=VENV_DIR/bin/python python -m pytest -q tests/test_comfyui.py
#
# COMFYUI_DIR is your own checkout of github.com/Comfy-Org/ComfyUI (v0.3.64 or newer); this script downloads
# no ComfyUI code. VENV_DIR defaults to COMFYUI_DIR/.venv. Re-running it is safe.
# Steps (measured on v0.3.64 with the CPU torch 2.13 wheel):
#   1. the CPU torch wheel first, then ComfyUI's requirements with torch pinned (so pip never swaps it for a
#      CUDA build), plus `requests` (ComfyUI imports it without listing it), plus this pack's requirements;
#   2. torchaudio from PyPI is built against another torch: uninstall it (only ComfyUI's audio nodes need it);
#   3. torchvision fails at import on CPU torch because two `register_fake` decorators (nms, qnms) in
#      torchvision/_meta_registrations.py run even when its C ops are absent: guard them with
#      torchvision.extension._has_ops(). The pack never uses torchvision's C ops.
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 COMFYUI_DIR [VENV_DIR]" >&2
    exit 2
fi
COMFYUI_DIR=$(cd "$1" && pwd)
VENV_DIR=${2:-$COMFYUI_DIR/.venv}
PACK_DIR=$(cd "$(dirname "$0")/.." && pwd)
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

[ -f "$COMFYUI_DIR/main.py" ] && [ -f "$COMFYUI_DIR/requirements.txt" ] \
    || { echo "$COMFYUI_DIR is not a ComfyUI checkout (no main.py / requirements.txt)" >&2; exit 2; }

[ -x "$VENV_DIR/bin/python" ] || python3 -m venv "$VENV_DIR"
PY="$VENV_DIR/bin/python"
PIN=$(mktemp)
trap 'rm -f "$PIN"' EXIT
echo "torch==$TORCH_VERSION" > "$PIN"

"$PY" -m pip install -q "torch==$TORCH_VERSION"
"$PY" -m pip install -q -c "$PIN" -r "$COMFYUI_DIR/requirements.txt" requests
PACK_PINS=()
[ -f "$PACK_DIR/constraints.txt" ] && PACK_PINS=(-c "$PACK_DIR/constraints.txt")
"$PY" -m pip install -q -c "$PIN" "${PACK_PINS[@]}" -r "$PACK_DIR/requirements.txt"

"$PY" -m pip uninstall -y -q torchaudio || true

"$PY" - <<'EOF'
import importlib.util, pathlib, re
spec = importlib.util.find_spec("torchvision")
if spec is None:
    raise SystemExit(0)
path = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
text = path.read_text()
guarded = re.sub(r'^@torch\.library\.register_fake\(("torchvision::q?nms")\)$',
                 r'@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))',
                 text, flags=re.M)
if guarded != text:
    path.write_text(guarded)
    print(f"guarded torchvision's register_fake calls in {path}")
EOF

"$PY" -c "import torch, torchvision; print('torch', torch.__version__, '| torchvision', torchvision.__version__)"
echo "ComfyUI python: $PY"
echo "run: COMFYUI_DIR=$COMFYUI_DIR FINEPHYS_COMFY_PYTHON=$PY python -m pytest -q tests/test_comfyui.py"
