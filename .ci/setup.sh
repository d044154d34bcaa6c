# Shared by .ci/run (CI) and .ci/first-run (the README's first run); sourced from the repository root.
OLDEST_TAG=v0.3.64
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-infusion"

# --- ComfyUI trees, newest first: $COMFYUI_PATH alone if set; else every tree in ../shared
# (ComfyUI-0.33.0, then ComfyUI = 0.3.64); else a shallow clone of the oldest supported tag (cached).
find_trees() {  # sets the array `trees`
  trees=()
  if [ -n "${COMFYUI_PATH:-}" ]; then
    trees=("$COMFYUI_PATH")
    return
  fi
  for tree in ../shared/ComfyUI-0.33.0 ../shared/ComfyUI; do
    [ -f "$tree/nodes.py" ] && trees+=("$(cd "$tree" && pwd)")
  done
  if [ ${#trees[@]} -eq 0 ]; then
    local clone="$CACHE/ComfyUI-$OLDEST_TAG"
    if [ ! -f "$clone/nodes.py" ]; then
      rm -rf "$clone.partial"
      git clone -q --depth 1 --branch "$OLDEST_TAG" https://github.com/comfyanonymous/ComfyUI "$clone.partial"
      mv "$clone.partial" "$clone"
    fi
    trees=("$clone")
  fi
}
version_of() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null || true; }

# --- The first run's ComfyUI and Python (.ci/first-run alone; CI keeps find_trees and its own environments).
# ComfyUI: the runner's rule (find_comfyui in infusion/cli/locate.py: $COMFYUI_PATH, else the ComfyUI this pack is
# installed in), else find_trees (../shared, else the clone). Python: the first of that ComfyUI's own Pythons that
# already runs the first run; none (empty) when none does, and .venv-<version> is built as CI builds it.
first_run_comfyui() {  # sets `tree`; fails with the runner's message when $COMFYUI_PATH is not a ComfyUI
  local found
  # $PWD, not the physical path Python would see: a pack symlinked into custom_nodes is found there.
  if found=$(python3 -c 'import sys
from infusion.cli.locate import ComfyUINotFound, find_comfyui
try:
    print(find_comfyui(sys.argv[1]))
except ComfyUINotFound as e:
    sys.exit(str(e))' "$PWD" 2>&1); then
    tree=$found
  elif [ -n "${COMFYUI_PATH:-}" ]; then
    echo "$found" >&2
    return 1
  else
    find_trees
    tree=${trees[0]}
  fi
}
# What the first run imports (ComfyUI from TREE first on the path, as the runner puts it) and nothing of ComfyUI's
# or the pack's requirements.txt missing: `PYTHON -c "$PYTHON_READY" TREE` succeeds in a Python that can run it.
PYTHON_READY='import sys
sys.path.insert(0, sys.argv[1])
import torch, safetensors, einops, numpy, transformers, comfy.utils
from infusion.cli.locate import PACK_ROOT, missing_requirements
sys.exit(1 if missing_requirements(sys.argv[1]) + missing_requirements(PACK_ROOT) else 0)'
first_run_python() {  # first_run_python TREE: sets `python` (empty when none is ready)
  local tree=$1 candidate path
  python=""
  # ComfyUI's Python: a virtual environment in its folder, the Windows portable build's (python_embeded beside
  # the ComfyUI folder), else the one on PATH, which a manual install runs ComfyUI with.
  for candidate in "$tree/venv/bin/python" "$tree/.venv/bin/python" "$tree/venv/Scripts/python.exe" \
      "$tree/.venv/Scripts/python.exe" "$tree/../python_embeded/python.exe" python3 python; do
    path=$(command -v "$candidate" 2>/dev/null) || continue
    if "$path" -c "$PYTHON_READY" "$tree" >/dev/null 2>&1; then
      python=$path
      return
    fi
  done
}

# --- Bytecode, compiled once into .pycache: ComfyUI's trees may be read-only, and where Python is told to write
# none (PYTHONDONTWRITEBYTECODE, as on this machine) every process compiled every module it imported, seconds
# a start. Nothing is compiled at install: a module is compiled the first time a process imports it.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX="$PWD/.pycache"

# --- Python. torch 2.14.1 with torchvision runs on the CPU here (the CPU-only torch wheel on this machine
# has no matching torchvision, which ComfyUI imports). ComfyUI lists torchaudio (0.33's comfy.sd imports
# it), whose newest release (2.11.1) pins an older torch: it is installed without its dependencies, and
# what ComfyUI uses of it (resample, MelSpectrogram) runs on torch 2.14.1. torch is installed once, in
# .venv-torch (5.3 GB with its CUDA libraries, which its import loads even on the CPU), which every version's
# environment reads through a .pth file; each has its own copy of everything else, so its own versions come
# first. uv installs (pinned, into .venv-torch/.uv) in seconds what pip takes minutes over (unpacking and
# resolving): it builds both; pip, with this machine's index settings, is the fallback.
TORCH=(torch==2.14.1 torchvision==0.29.1)
TORCHAUDIO=torchaudio==2.11.1
UV_PIN=uv==0.13.9
UV=.venv-torch/.uv/bin/uv
torch_ready() { [ -f .venv-torch/ready ] && [ "$(cat .venv-torch/ready)" = "${TORCH[*]} $TORCHAUDIO" ]; }
torch_environment() {  # builds .venv-torch
  rm -rf .venv-torch
  if ! { python3 -m pip install -q --no-deps --target .venv-torch/.uv "$UV_PIN" \
      && "$UV" pip install -q --python python3 --target .venv-torch "${TORCH[@]}" \
      && "$UV" pip install -q --python python3 --target .venv-torch --no-deps "$TORCHAUDIO"; }; then
    rm -rf .venv-torch  # pip's way, from scratch
    python3 -m pip install -q --no-compile --target .venv-torch "${TORCH[@]}"
    python3 -m pip install -q --no-compile --no-deps --target .venv-torch "$TORCHAUDIO"
  fi
  echo "${TORCH[*]} $TORCHAUDIO" > .venv-torch/ready
}
requirements_of() {  # requirements_of TREE VERSION: the requirements file the environment is built from
  if [ -f ".ci/requirements-$2.txt" ]; then echo ".ci/requirements-$2.txt"; else echo "$1/requirements.txt"; fi
}
environment_ready() {  # environment_ready TREE VERSION: built, from today's requirements file
  torch_ready && [ -f ".venv-$2/ready" ] && cmp -s ".venv-$2/ready" "$(requirements_of "$1" "$2")"
}
environment() {  # environment TREE VERSION: builds .venv-VERSION on .venv-torch (built first)
  local tree=$1 version=$2 venv=".venv-$2"
  rm -rf "$venv"
  python3 -m venv "$venv"
  local site
  site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$PWD/.venv-torch" > "$site/shared-torch.pth"
  if [ -f ".ci/requirements-$version.txt" ]; then  # the whole list, pinned: installed as it is, unresolved
    local list=".ci/requirements-$version.txt"
    [ -x "$UV" ] && "$UV" pip install -q --python "$venv/bin/python" --no-deps -r "$list" \
      || "$venv/bin/pip" install -q --no-deps --no-compile -r "$list"
  else  # a version CI was not proven with: its own list, torch left as installed
    grep -v -E '^(torch|torchvision|torchaudio)([^a-z_-]|$)' "$tree/requirements.txt" > "$venv/comfyui-requirements.txt"
    "$venv/bin/pip" install -q -r "$venv/comfyui-requirements.txt" pytest pytest-xdist requests comfy-cli
  fi
  cp "$(requirements_of "$tree" "$version")" "$venv/ready"
}
