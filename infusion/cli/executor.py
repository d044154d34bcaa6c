"""Run an API-format prompt with ComfyUI's own executor (execution.PromptExecutor), no server.

The executor talks to a server object only to send events (executing, progress, errors); a
stub with the attributes it reads takes them and hands them to a reporter. The progress hook
is the one ComfyUI's main.py installs (hijack_progress): it also makes every progress update
a cancellation point. ComfyUI must be set up with its nodes loaded.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, TextIO

from .. import compat

CLIENT_ID = "infusion-cli"


class PromptInvalid(ValueError):
    """ComfyUI's validation refused the prompt; the message lists every node error."""


class RunFailed(RuntimeError):
    """A node raised while the prompt ran (or the run was cancelled)."""


class ConsoleReporter:
    """Prints which node runs and its progress, at most every `interval` seconds per node."""

    def __init__(self, stream: TextIO | None = None, interval: float = 2.0):
        self.stream = stream or sys.stdout
        self.interval = interval
        self.titles: dict[str, str] = {}
        self._last: dict[str, float] = {}

    def begin(self, prompt: Mapping[str, Mapping[str, Any]]) -> None:
        self.titles = {i: n.get("_meta", {}).get("title") or n["class_type"] for i, n in prompt.items()}
        self._last = {}

    def _name(self, node_id: Any) -> str:
        return f"{self.titles.get(str(node_id), node_id)} (#{node_id})"

    def __call__(self, event: str, data: Mapping[str, Any]) -> None:
        if event == "executing" and data.get("node") is not None:
            print(f"- {self._name(data['node'])}", file=self.stream, flush=True)
        elif event == "execution_cached" and data.get("nodes"):
            print(f"- cached, not re-run: {', '.join(self._name(n) for n in data['nodes'])}", file=self.stream,
                  flush=True)
        elif event == "progress":
            node, value, total = str(data.get("node")), data["value"], data["max"]
            now = time.monotonic()
            if value >= total or now - self._last.get(node, 0.0) >= self.interval:
                self._last[node] = now
                print(f"  {self._name(node)}: {value}/{total}", file=self.stream, flush=True)


class _Server:
    """What PromptExecutor and the progress handlers read from ComfyUI's PromptServer."""

    def __init__(self, report: Any):
        self.report = report
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.last_prompt_id: str | None = None
        self.sockets_metadata: dict = {}  # no websocket clients: no preview-metadata feature

    def send_sync(self, event: Any, data: Any, sid: Any = None) -> None:
        if isinstance(event, str) and isinstance(data, Mapping):
            self.report(event, data)


@contextlib.contextmanager
def _progress_hook(server: _Server) -> Iterator[None]:
    """main.py's hijack_progress, restored afterwards (tests and other callers may have their own)."""
    import comfy.model_management
    import comfy.utils
    from comfy_execution.progress import get_progress_state
    from comfy_execution.utils import get_executing_context

    def hook(value, total, preview_image, prompt_id=None, node_id=None):
        context = get_executing_context()
        if prompt_id is None and context is not None:
            prompt_id = context.prompt_id
        if node_id is None and context is not None:
            node_id = context.node_id
        comfy.model_management.throw_exception_if_processing_interrupted()
        prompt_id = prompt_id if prompt_id is not None else server.last_prompt_id
        node_id = node_id if node_id is not None else server.last_node_id
        get_progress_state().update_progress(node_id, value, total, preview_image)
        server.send_sync("progress", {"value": value, "max": total, "prompt_id": prompt_id, "node": node_id})

    previous = comfy.utils.PROGRESS_BAR_HOOK
    comfy.utils.set_progress_bar_global_hook(hook)
    try:
        yield
    finally:
        comfy.utils.set_progress_bar_global_hook(previous)


@contextlib.contextmanager
def cancel_on_ctrl_c(stream: TextIO | None = None) -> Iterator[None]:
    """First Ctrl-C: cancel like the UI's Cancel button (a training run then saves its resume
    state and stops cleanly); a second one aborts at once."""
    import nodes

    def handler(signum, frame):
        print("\nCancelling after the current step (Ctrl-C again to abort now)...", file=stream or sys.stderr,
              flush=True)
        nodes.interrupt_processing(True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class RunResult:
    prompt_id: str
    success: bool
    interrupted: bool
    error: dict | None
    ui: dict[str, dict]  # node id -> what the node showed in the UI (saved images, texts)
    outputs: dict[str, list] = field(repr=False, default_factory=dict)  # node id -> output slots

    def output(self, node_id: str, slot: int = 0) -> Any:
        """The value of one output of a node that ran (its first item, for list outputs)."""
        return self.outputs[str(node_id)][slot][0]

    def saved_files(self, output_directory: str) -> list[str]:
        """Paths of the images the prompt saved to the output folder (SaveImage and the like)."""
        paths = []
        for shown in self.ui.values():
            for image in shown.get("images") or []:
                if image.get("type") == "output":
                    paths.append(os.path.join(output_directory, image.get("subfolder", ""), image["filename"]))
        return paths


def _describe_invalid(error: Mapping[str, Any], node_errors: Mapping[str, Any], prompt: Mapping[str, Any]) -> str:
    lines = [f"{error.get('message', 'invalid prompt')}" + (f": {error['details']}" if error.get("details") else "")]
    for node_id, info in node_errors.items():
        title = prompt.get(node_id, {}).get("_meta", {}).get("title") or info.get("class_type")
        for e in info.get("errors", []):
            lines.append(f"  {title} (#{node_id}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


class Runner:
    """One PromptExecutor for the whole process: like ComfyUI, it keeps node outputs cached
    between prompts, so a checkpoint loaded by one run is reused by the next."""

    def __init__(self, report: Any = None):
        self.server = _Server(report or ConsoleReporter())
        self.executor = compat.prompt_executor(self.server)

    def validate(self, prompt: Mapping[str, Any]) -> list[str]:
        """ComfyUI's own validation; returns the output node ids to execute, raises PromptInvalid."""
        import execution
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.CRITICAL)  # it also logs every error; PromptInvalid says it once
        try:
            valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), prompt, None))
        finally:
            root.setLevel(level)
        if not valid or node_errors:
            raise PromptInvalid(_describe_invalid(error or {"message": "some nodes are invalid"}, node_errors, prompt))
        return outputs

    def run(self, prompt: dict[str, Any], extra_pnginfo: Mapping[str, Any] | None = None) -> RunResult:
        """Validate and execute; returns what ran (RunResult.success is False on an error or cancel)."""
        outputs = self.validate(prompt)
        prompt_id = str(uuid.uuid4())
        self.server.last_prompt_id = prompt_id
        if hasattr(self.server.report, "begin"):
            self.server.report.begin(prompt)
        extra = {"client_id": CLIENT_ID}
        if extra_pnginfo:
            extra["extra_pnginfo"] = dict(extra_pnginfo)  # SaveImage embeds it, as the UI's workflow

        async def execute() -> dict[str, list]:
            # One event loop for the run and the reading of its outputs (0.38's cache is async).
            await self.executor.execute_async(prompt, prompt_id, extra, outputs)
            return await compat.cached_outputs(self.executor, prompt)

        with _progress_hook(self.server):
            ran = asyncio.run(execute())
        messages = dict(self.executor.status_messages)
        return RunResult(prompt_id, self.executor.success and "execution_error" not in messages
                         and "execution_interrupted" not in messages, "execution_interrupted" in messages,
                         messages.get("execution_error"), self.executor.history_result.get("outputs", {}), ran)

    def run_or_raise(self, prompt: dict[str, Any], extra_pnginfo: Mapping[str, Any] | None = None) -> RunResult:
        """run(), raising RunFailed with the failing node and ComfyUI's message."""
        result = self.run(prompt, extra_pnginfo)
        if result.interrupted:
            raise RunFailed("cancelled")
        if not result.success:
            e = result.error or {}
            title = prompt.get(str(e.get("node_id")), {}).get("_meta", {}).get("title") or e.get("node_type")
            raise RunFailed(f"{title} (#{e.get('node_id')}) failed: {e.get('exception_type', 'error')}: "
                            f"{e.get('exception_message', '').strip()} (--verbose shows ComfyUI's traceback)")
        return result
