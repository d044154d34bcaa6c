"""ComfyUI as a library: configure it the way its main.py does, import it, load its nodes and this pack.

Only what a headless run needs from main.py: its command-line options (parsed by ComfyUI's own
parser), the folder options and extra_model_paths.yaml, the device, the built-in extra nodes,
and this pack (or every pack in custom_nodes/). No server, no frontend, no database.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import Iterator, Sequence

from .. import compat
from .locate import PACK_ROOT, ComfyUINotFound, find_comfyui, import_failure_message


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@contextlib.contextmanager
def _captured_warnings() -> Iterator[_Capture]:
    """ComfyUI reports node import failures as log warnings only (tracebacks included)."""
    capture = _Capture()
    root = logging.getLogger()
    old_level, old_handlers = root.level, root.handlers
    root.handlers = [capture]
    root.setLevel(logging.WARNING)
    try:
        yield capture
    finally:
        root.handlers = old_handlers
        root.setLevel(old_level)


def _executor_errors(record: logging.LogRecord) -> bool:
    """Drops the executor's own report of a failing node (message and traceback): the runner
    names the node and the error itself; --verbose keeps ComfyUI's full log."""
    return not (record.levelno >= logging.ERROR and os.path.basename(record.pathname) == "execution.py")


def put_comfyui_first_on_path(comfy_root: str) -> None:
    # ComfyUI's root must come first: run from the pack's folder, `import nodes` would
    # otherwise find the pack's nodes/ package instead of ComfyUI's nodes.py.
    while comfy_root in sys.path:
        sys.path.remove(comfy_root)
    sys.path.insert(0, comfy_root)
    stale = sys.modules.get("nodes")
    if stale is not None and os.path.dirname(os.path.abspath(getattr(stale, "__file__", "") or "")) != comfy_root:
        del sys.modules["nodes"]


def _has_accelerator() -> bool:
    import torch
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(mps and mps.is_available()) or bool(xpu and xpu.is_available())


def _apply_folder_options(comfy_root: str) -> None:
    """The folder part of ComfyUI's main.py (apply_custom_paths, start_comfyui): extra_model_paths.yaml
    and --output/--input/--user/--temp-directory, so models and outputs are where the user's ComfyUI
    has them."""
    import folder_paths
    import utils.extra_config
    from comfy.cli_args import args

    default_yaml = os.path.join(comfy_root, "extra_model_paths.yaml")
    configs = [default_yaml] if os.path.isfile(default_yaml) else []
    configs += [path for group in (args.extra_model_paths_config or []) for path in group]
    for path in configs:
        utils.extra_config.load_extra_path_config(path)
    if args.temp_directory:
        folder_paths.set_temp_directory(os.path.join(os.path.abspath(args.temp_directory), "temp"))
    if args.output_directory:
        folder_paths.set_output_directory(os.path.abspath(args.output_directory))
    if args.input_directory:
        folder_paths.set_input_directory(os.path.abspath(args.input_directory))
    if args.user_directory:
        folder_paths.set_user_directory(os.path.abspath(args.user_directory))


def _load_nodes(pack_root: str, verbose: bool) -> None:
    import hook_breaker_ac10a0
    import nodes

    with _captured_warnings() as log:
        hook_breaker_ac10a0.save_functions()
        try:
            asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        finally:
            hook_breaker_ac10a0.restore_functions()
    failed = [line for line in log.lines if line.startswith("IMPORT FAILED")
              and not line.rstrip().endswith(compat.HEADLESS_IMPORT_FAILURES)]
    if verbose:
        print("\n".join(log.lines), file=sys.stderr)
    elif failed:
        print(f"note: some ComfyUI nodes did not import ({', '.join(l.split(':', 1)[1].strip() for l in failed)}); "
              "workflows that use them will fail. --verbose shows why.", file=sys.stderr)

    if os.path.abspath(pack_root) in (os.path.abspath(d) for d in nodes.LOADED_MODULE_DIRS.values()):
        return
    with _captured_warnings() as log:
        ok = asyncio.run(nodes.load_custom_node(pack_root))
    if not ok:
        raise RuntimeError(f"ComfyUI failed to load this pack ({pack_root}):\n" + "\n".join(log.lines))


def configure(comfy_args: Sequence[str] = (), *, comfy_root: str | None = None, pack_root: str = PACK_ROOT,
              verbose: bool = False) -> str:
    """Find, configure and import ComfyUI the way its main.py does (its options, folders, device), no nodes
    loaded yet; returns the ComfyUI root. Call once per process, before anything imports ComfyUI.

    comfy_args: ComfyUI's own command-line options (--cpu, --lowvram, --base-directory,
    --output-directory, ...). comfy_root: the ComfyUI tree, else found from the pack's place or COMFYUI_PATH.
    """
    comfy_root = comfy_root or find_comfyui(pack_root)
    put_comfyui_first_on_path(comfy_root)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(message)s")
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_executor_errors)
    try:
        import comfy.options
        # ComfyUI parses its options at import; hand it exactly the ComfyUI ones.
        comfy.options.enable_args_parsing(True)
        saved_argv = sys.argv
        sys.argv = [os.path.join(comfy_root, "main.py"), *comfy_args]
        try:
            from comfy.cli_args import args
        finally:
            sys.argv = saved_argv
        if not args.cpu and not args.directml and not _has_accelerator():
            args.cpu = True  # must be set before comfy.model_management is imported
        _apply_folder_options(comfy_root)
        import comfy.model_management  # noqa: F401  (picks the device)
        import execution  # noqa: F401
        import nodes  # noqa: F401
    except ImportError as e:
        raise ComfyUINotFound(import_failure_message(comfy_root, e)) from e
    return comfy_root


def start(comfy_args: Sequence[str] = (), *, verbose: bool = False, pack_root: str = PACK_ROOT) -> str:
    """ComfyUI configured (`configure`) with its built-in nodes and this pack loaded; returns its root."""
    comfy_root = configure(comfy_args, pack_root=pack_root, verbose=verbose)
    _load_nodes(pack_root, verbose)
    import comfy.utils
    comfy.utils.set_progress_bar_enabled(False)  # the runner's reporter prints every node's progress instead
    return comfy_root
