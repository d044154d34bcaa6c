"""The train command's batch on a Ray cluster: a worker (a Ray actor) per GPU, each with ComfyUI and the
checkpoint loaded once, trains the rows it is handed through ComfyUI's executor, exactly as the local batch
does (train.run_row); the driver hands out rows, shows one progress bar and prints the summary.

Files: every worker writes straight into the concept folder (--output-folder, else its ComfyUI's
models/infusion), which on a cluster of several machines must be one shared path (NFS and the like). Sending
files back to the driver would lose a row's resume state with the machine that held it: on the shared folder,
the worker that retries a row finds the state its dead worker saved and continues from there. Every file is
written atomically by the trainer itself, so a worker killed mid-save leaves no damaged file.

Faults: a worker that dies (its process killed, its machine gone) is restarted by Ray; its row is handed out
again, to whichever worker is free first, and resumes from the row's last saved state (the same file as an
uninterrupted run). A row that fails on its own input fails alone. Ctrl-C cancels every running row, each
keeping its last step with a resume state, as the local batch does.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

from .locate import PACK_ROOT
from .train import TRAIN_ID, RowResult, row_lines, run_row, saved_state

# A row is handed out at most this many times (a row that kills every worker it runs on fails, the others go on),
# and a worker restarted at most this many times.
ATTEMPTS = 3
RESTARTS = 3
POLL_SECONDS = 1.0  # how often the driver asks the busy workers for their step (the progress bar)
CONTROL = "control"  # the workers' concurrency group for progress and cancel


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(f"--ray needs Ray, which this Python lacks: install it with `{sys.executable} -m pip "
                         "install ray` (on every machine of the cluster)") from None
    return ray


class Worker:
    """One Ray actor: a ComfyUI of its own (its options, this pack), trains one row at a time, always on the same
    thread; `progress` and `cancel` are called in the CONTROL group, whose own thread answers while a row trains."""

    def __init__(self, comfy_args: Sequence[str], checkpoint: str, output_folder: str | None, verbose: bool):
        from . import runtime, train
        from .executor import Runner
        from .node_inputs import node_definitions

        runtime.start(comfy_args, verbose=verbose)
        if output_folder:
            train.use_output_folder(output_folder)
        train.model_file("checkpoints", checkpoint)  # a path: its folder, as in the driver
        self.definitions = node_definitions(train.NODES)
        self.runner = Runner(report=self._report)
        self.step = 0

    def _report(self, event: str, data: Any) -> None:
        if event == "progress" and str(data.get("node")) == TRAIN_ID:
            self.step = int(data["value"])

    def where(self) -> tuple[int, str]:
        """Its process id and machine."""
        return os.getpid(), socket.gethostname()

    def train(self, prompt: dict[str, Any], resume_saved: bool) -> RowResult:
        """resume_saved: continue from the row's resume state (its dead worker saved one)."""
        self.step = 0
        return run_row(self.runner, self.definitions, prompt, resume_saved)

    def progress(self) -> int:
        return self.step

    def cancel(self) -> None:
        import nodes
        nodes.interrupt_processing(True)  # as the UI's Cancel: the row saves its last step and stops


@dataclass
class Cluster:
    """Where and how the workers run."""
    address: str  # "": a local Ray of this machine; else the cluster's address (host:port, "auto")
    comfy_root: str  # the driver's ComfyUI: every machine has it at this path
    workers: int | None  # None: one per GPU, or one sharing the CPUs without GPUs
    comfy_args: list[str]
    checkpoint: str  # as given: a name in models/checkpoints, or a path every machine has
    output_folder: str | None
    verbose: bool


@dataclass
class _Row:
    number: int  # 1-based, the batch file's order
    prompt: dict[str, Any]
    attempts: int = 0
    state_before: tuple[int, int] | None = None  # its resume state when first handed out (train.saved_state)

    @property
    def name(self) -> str:
        return str(self.prompt[TRAIN_ID]["inputs"]["output_name"])

    @property
    def steps(self) -> int:
        return int(self.prompt[TRAIN_ID]["inputs"]["steps"])


def _start_workers(ray: Any, cluster: Cluster) -> list[Any]:
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 1))
    count = cluster.workers or max(gpus, 1)
    # Shares, so that every worker can start: more workers than GPUs share them (a large GPU trains several
    # concepts at once); without GPUs the CPUs are split (Ray gives each worker that many threads).
    gpu_share = min(1.0, gpus / count) if gpus else 0
    cpu_share = min(1.0, cpus / count) if gpus else max(1, cpus // count) if count <= cpus else cpus / count
    actor = ray.remote(concurrency_groups={CONTROL: 1})(Worker).options(
        num_gpus=gpu_share, num_cpus=cpu_share, max_restarts=RESTARTS, max_task_retries=0)
    print(f"[ray] {count} worker(s), each with {f'{gpu_share:g} GPU' if gpus else f'{cpu_share:g} CPU'}; "
          f"the cluster has {gpus} GPU(s), {cpus} CPU(s)", flush=True)
    return [actor.remote(cluster.comfy_args, cluster.checkpoint, cluster.output_folder, cluster.verbose)
            for _ in range(count)]


class _Batch:
    """The driver's loop: a row to each free worker, results as they come, dead workers' rows again."""

    def __init__(self, ray: Any, workers: list[Any], rows: list[_Row]):
        from tqdm import tqdm

        self.ray, self.rows = ray, rows
        self.pending = deque(rows)
        self.calls: dict[Any, tuple[Any, _Row | None]] = {}  # a call -> its worker and row (None: ready check)
        self.idle: list[Any] = []
        self.where: dict[Any, tuple[int, str]] = {}
        self.results: dict[int, RowResult] = {}
        self.done_steps = 0
        self.cancelled = self.cancel_sent = False
        self.bar = tqdm(total=sum(r.steps for r in rows), unit="step", desc="batch", dynamic_ncols=True,
                        disable=None)  # no bar where stderr is no terminal (a log file)
        for worker in workers:
            self.calls[worker.where.remote()] = (worker, None)

    def say(self, line: str) -> None:
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()

    def _label(self, worker: Any) -> str:
        pid, host = self.where[worker]
        return f"worker pid {pid} on {host}"

    def _hand_out(self) -> None:
        while self.pending and self.idle:
            worker, row = self.idle.pop(0), self.pending.popleft()
            row.attempts += 1
            if row.attempts == 1:
                row.state_before = saved_state(row.name)
            resume = row.attempts > 1 and saved_state(row.name) != row.state_before  # saved by a dead worker
            self.calls[worker.train.remote(row.prompt, resume)] = (worker, row)
            again = f" (attempt {row.attempts} of {ATTEMPTS})" if row.attempts > 1 else ""
            self.say(f"[{row.number}/{len(self.rows)}] {row.name}: started on {self._label(worker)}{again}")

    def _finish(self, row: _Row, result: RowResult) -> None:
        self.results[row.number] = result
        self.done_steps += row.steps
        resumed = f" (resumed from step {result.resumed_from})" if result.resumed_from else ""
        self.say(f"[{row.number}/{len(self.rows)}] {row.name}{resumed}:\n{row_lines(result)}")

    def _ended(self, call: Any) -> None:
        worker, row = self.calls.pop(call)
        try:
            value = self.ray.get(call)
        except self.ray.exceptions.RayError as e:
            if row is None:  # it could not start, or not again: the others go on
                self.say(f"[ray] a worker could not start, or not again: {_cause(e)}")
            elif isinstance(e, self.ray.exceptions.RayActorError):
                self.say(f"[{row.number}/{len(self.rows)}] {row.name}: its worker ({self._label(worker)}) died")
                if row.attempts >= ATTEMPTS:
                    self._finish(row, RowResult(row.name, "failed", f"its worker died on each of {ATTEMPTS} attempts"))
                else:
                    self.pending.appendleft(row)
                self.calls[worker.where.remote()] = (worker, None)  # ready once Ray has restarted it
            else:  # not the row's input (that fails in run_row): the worker's own code raised
                self._finish(row, RowResult(row.name, "failed", _cause(e)))
                self.idle.append(worker)
            return
        if row is None:
            self.where[worker] = value
        else:
            self._finish(row, value)
        self.idle.append(worker)

    def _show_progress(self) -> None:
        if self.bar.disable:  # no terminal to show it on: no calls to the workers for it
            return
        calls = [worker.progress.options(concurrency_group=CONTROL).remote()
                 for worker, row in self.calls.values() if row is not None]
        answered, _ = self.ray.wait(calls, num_returns=len(calls), timeout=POLL_SECONDS) if calls else ([], [])
        steps = self.done_steps
        for call in answered:
            try:
                steps += self.ray.get(call)
            except self.ray.exceptions.RayError:
                pass  # a dying worker: its row's result says what happened
        self.bar.update(max(0, steps - self.bar.n))

    def run(self) -> None:
        """Until every row has ended, or no worker is left for the rows still to do. Ctrl-C: every running row
        saves its last step and stops, no row is handed out any more; a second Ctrl-C aborts at once."""
        while True:
            if self.cancelled and not self.cancel_sent:
                self.cancel_sent = True
                self.pending.clear()
                for worker, row in self.calls.values():
                    if row is not None:
                        worker.cancel.options(concurrency_group=CONTROL).remote()
            self._hand_out()
            training = any(row is not None for _, row in self.calls.values())
            if not training and (not self.pending or not self.calls):
                break  # done; or rows left and no worker, not even one starting
            ended, _ = self.ray.wait(list(self.calls), num_returns=1, timeout=POLL_SECONDS)
            for call in ended:
                self._ended(call)
            self._show_progress()

    def on_ctrl_c(self, signum: int, frame: Any) -> None:
        self.say("Cancelling every row after its current step (Ctrl-C again to abort now)...")
        self.cancelled = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def outcome(self) -> list[RowResult]:
        """Every row's result; a row that never ended was cancelled before it started, or had no worker left."""
        self.bar.close()
        never = RowResult("", "not run") if self.cancelled else RowResult("", "failed", "no worker was left for it")
        return [self.results.get(row.number) or replace(never, name=row.name) for row in self.rows]


def _cause(error: Exception) -> str:
    """What a worker raised, without Ray's wrapping and traceback (its last line: the exception)."""
    cause = getattr(error, "cause", None)
    text = f"{type(cause).__name__}: {cause}" if isinstance(cause, Exception) else str(error)
    return text.strip().splitlines()[-1] if text.strip() else type(error).__name__


@contextlib.contextmanager
def workers_of(cluster: Cluster) -> Iterator[tuple[Any, list[Any]]]:
    """(ray, its workers) for as long as the block runs: Ray started or joined, a worker per GPU (or the count
    asked), each loading its ComfyUI; Ray shut down (or left) afterwards."""
    ray = import_ray()
    # Workers import this pack and find ComfyUI as the driver does: the same paths on every machine.
    paths = [PACK_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    ray.init(address=cluster.address or None, include_dashboard=False, log_to_driver=cluster.verbose,
             logging_level=logging.INFO if cluster.verbose else logging.WARNING,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(paths), "COMFYUI_PATH": cluster.comfy_root}})
    try:
        yield ray, _start_workers(ray, cluster)
    finally:
        ray.shutdown()


def run_batch(ray: Any, workers: list[Any], prompts: Sequence[dict[str, Any]]) -> list[RowResult]:
    """Train each prompt (train.train_prompt) on a free worker; the rows' results in their order."""
    batch = _Batch(ray, workers, [_Row(i, p) for i, p in enumerate(prompts, start=1)])
    previous = signal.signal(signal.SIGINT, batch.on_ctrl_c)
    try:
        batch.run()
    finally:
        signal.signal(signal.SIGINT, previous)
    return batch.outcome()


def train_on_ray(cluster: Cluster, prompts: Sequence[dict[str, Any]]) -> list[RowResult]:
    with workers_of(cluster) as (ray, workers):
        return run_batch(ray, workers, prompts)
