"""Finding ComfyUI for the headless runner, and saying exactly what is missing when it cannot.

ComfyUI is found through $COMFYUI_PATH, else as the ComfyUI that holds this pack in
<ComfyUI>/custom_nodes/<pack>. Nothing here imports ComfyUI or torch.
"""
from __future__ import annotations

import importlib.metadata
import os
import re
import sys
from typing import Mapping

# infusion/cli/locate.py -> the pack root (abspath, not realpath: a pack symlinked into
# ComfyUI/custom_nodes is still seen at its custom_nodes location).
PACK_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Served to the browser only; a headless run does not need them.
_BROWSER_ONLY = re.compile(r"^comfyui[-_]")


class ComfyUINotFound(RuntimeError):
    """No usable ComfyUI; the message says what is missing and how to fix it."""


def _lacks(path: str) -> list[str]:
    return [name for name, ok in (("a comfy/ folder", os.path.isdir(os.path.join(path, "comfy"))),
                                  ("nodes.py", os.path.isfile(os.path.join(path, "nodes.py")))) if not ok]


def is_comfyui_root(path: str) -> bool:
    return os.path.isdir(path) and not _lacks(path)


def find_comfyui(pack_root: str = PACK_ROOT, environ: Mapping[str, str] = os.environ) -> str:
    """The ComfyUI root folder; raises ComfyUINotFound with the reason otherwise."""
    env = environ.get("COMFYUI_PATH", "").strip()
    if env:
        path = os.path.abspath(os.path.expanduser(env))
        if not os.path.isdir(path):
            raise ComfyUINotFound(f"COMFYUI_PATH={env} does not exist. Set it to the ComfyUI folder "
                                  "(the one with main.py, nodes.py and comfy/).")
        if _lacks(path):
            raise ComfyUINotFound(f"COMFYUI_PATH={env} is not a ComfyUI folder: it has no {' and no '.join(_lacks(path))}. "
                                  "Set it to the ComfyUI folder (the one with main.py, nodes.py and comfy/).")
        return path
    for root in dict.fromkeys([os.path.abspath(pack_root), os.path.realpath(pack_root)]):
        parent = os.path.dirname(root)
        if os.path.basename(parent) == "custom_nodes":
            comfy_root = os.path.dirname(parent)
            if is_comfyui_root(comfy_root):
                return comfy_root
            raise ComfyUINotFound(f"this pack is in {parent}, but {comfy_root} is not a ComfyUI folder: it has no "
                                  f"{' and no '.join(_lacks(comfy_root))}. Set COMFYUI_PATH=/path/to/ComfyUI.")
    raise ComfyUINotFound(f"ComfyUI not found: COMFYUI_PATH is not set and this pack ({pack_root}) is not inside a "
                          "ComfyUI custom_nodes folder. Set COMFYUI_PATH=/path/to/ComfyUI, or install the pack as "
                          "ComfyUI/custom_nodes/ComfyUI-Infusion.")


def requirement_names(requirements_text: str) -> list[str]:
    """Distribution names in a requirements.txt (comments, options and version specifiers dropped)."""
    names = []
    for line in requirements_text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.append(re.split(r"[\s<>=!~;\[@]", line, maxsplit=1)[0])
    return names


def missing_requirements(comfy_root: str) -> list[str]:
    """ComfyUI's requirements (its requirements.txt, browser-only packages left out) that this
    Python does not have installed."""
    path = os.path.join(comfy_root, "requirements.txt")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        names = requirement_names(f.read())
    missing = []
    for name in names:
        if _BROWSER_ONLY.match(name):
            continue
        try:
            importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
    return missing


def import_failure_message(comfy_root: str, error: BaseException) -> str:
    """What to tell the user when importing ComfyUI failed."""
    message = f"ComfyUI at {comfy_root} does not import in this Python ({sys.executable}): {error}."
    missing = missing_requirements(comfy_root)
    if missing:
        message += (f" Not installed here, from its requirements.txt: {', '.join(missing)}. Run the runner with "
                    f"ComfyUI's own Python, or install them: {sys.executable} -m pip install -r "
                    f"{os.path.join(comfy_root, 'requirements.txt')}")
    return message
