"""Crash consistency against a real ComfyUI server: training is queued over HTTP with a snapshot and a
resume state every step, and the server is killed (SIGKILL) at seeded random moments: a fifth while the run
loads, the rest counted in saves (Linux's inotify), at the moment a save begins or in a step between two. After each kill every file in models/infusion must load (a concept through Load
Infusion's reader, a resume state through the trainer's); then the server is started again and the run
resumed. When the kills are done, the run is resumed to its end, and every file it wrote must equal, bit for
bit, the file an uninterrupted run on another server wrote.

    COMFYUI_PATH=/path/to/ComfyUI python -m infusion_dev.crash [--kills 20] [--seed 0] [--steps 60]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import random
import select
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

from infusion_dev import comfy_harness as h

NAME = "crash"
_IN_CREATE = 0x100  # inotify's "a file was created in the watched folder"
# A run that has not begun to save after this many times the reference run's whole duration is killed anyway.
HANG_AFTER = 10


@dataclass
class CrashReport:
    kills: int = 0
    kills_at_a_save: int = 0          # killed the moment a save created its temporary file
    temporaries_left: int = 0         # kills that left a save's temporary file (the save was cut short)
    files_checked: int = 0            # after every kill, every file; at the end, every file against the reference
    corrupt: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    steps_at_kills: list[int] = field(default_factory=list)   # the resume state's step after each kill
    timing: str = ""                  # the uninterrupted run's, which sets the kills' moments

    def summary(self) -> str:
        return (f"kills {self.kills} ({self.kills_at_a_save} the moment a save began, {self.temporaries_left} "
                f"cut a save short); files checked {self.files_checked}; corrupt {len(self.corrupt)}; "
                f"mismatches {len(self.mismatches)}; resume state's step after each kill: {self.steps_at_kills}; "
                f"{self.timing}")


def _prompt(photos: str, steps: int, resume: bool) -> dict[str, Any]:
    from infusion_dev import smoke
    from infusion_dev.overrides import set_input

    prompt, definitions = smoke.smoke_prompt("train_concept")
    set_input(prompt, definitions, smoke.nodes_of(prompt, "LoadConceptPhotos")[0], "folder", photos)
    train = smoke.nodes_of(prompt, "TrainInfusion")[0]
    # No previews: the run's time is its steps and saves, so a kill's moment says how far it gets.
    for key, value in {"output_name": NAME, "steps": steps, "save_every": 1, "resume": resume,
                       "sample_every": 0}.items():
        set_input(prompt, definitions, train, key, value)
    return prompt


def _base(root: str, checkpoint: str) -> str:
    from infusion_dev import smoke
    os.makedirs(os.path.join(root, "models", "checkpoints"))
    shutil.copy(checkpoint, os.path.join(root, "models", "checkpoints", smoke.CHECKPOINT))
    return root


def _queue(server: h.Server, prompt: dict) -> str:
    return server.post("prompt", {"prompt": prompt})["prompt_id"]


def _run_to_end(server: h.Server, prompt: dict, folder: str) -> float:
    """Queue `prompt` and wait for its success; returns when (seconds after queueing) its first file appeared."""
    started, first_file = time.monotonic(), None
    prompt_id = _queue(server, prompt)
    while prompt_id not in server.get(f"history/{prompt_id}"):
        if first_file is None and _written(folder):
            first_file = time.monotonic() - started
        time.sleep(0.01)
    entry = server.history(prompt_id)
    if entry.get("status", {}).get("status_str") != "success":
        raise AssertionError(f"the training failed: {entry.get('status')}\n{server.log()[-3000:]}")
    return first_file if first_file is not None else time.monotonic() - started


def _check_files(folder: str, report: CrashReport, stale: set[str]) -> None:
    """Every file the pack wrote loads; a new temporary file (never listed by Load Infusion) is counted."""
    from infusion.format import load_concept
    from infusion.training.state import RESUME_SUFFIX, load_state

    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        try:
            if entry.endswith(".safetensors"):
                load_concept(path, [folder])
            elif entry.endswith(RESUME_SUFFIX):
                load_state(path)
            else:
                continue
        except Exception as e:  # noqa: BLE001  (any failure to load is what this counts)
            report.corrupt.append(f"{entry}: {e}")
        report.files_checked += 1
    report.temporaries_left += bool(_saves_in_progress(folder) - stale)


def _written(folder: str) -> bool:
    """Whether a save has begun in `folder` (the name's lock file comes before any)."""
    return os.path.isdir(folder) and any(not e.endswith(".lock") for e in os.listdir(folder))


def _saves_in_progress(folder: str) -> set[str]:
    from infusion.format import TEMPORARY_SUFFIX
    return {e for e in os.listdir(folder) if e.endswith(TEMPORARY_SUFFIX)} if os.path.isdir(folder) else set()


class SaveWatch:
    """Counts the saves that begin in `folder` (each creates its temporary file), through Linux's inotify: a save
    lasts milliseconds (write, fsync, rename), too short for polling to catch on a busy machine."""

    def __init__(self, folder: str):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self.libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0 or self.libc.inotify_add_watch(self.fd, folder.encode(), _IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {folder}")
        self.begun = 0

    def __enter__(self) -> "SaveWatch":
        return self

    def __exit__(self, *exc: Any) -> None:
        os.close(self.fd)

    def _read(self) -> None:
        from infusion.format import TEMPORARY_SUFFIX
        while True:
            try:
                events = os.read(self.fd, 65536)
            except BlockingIOError:
                return
            while events:  # struct inotify_event: wd, mask, cookie, len, then the name (NUL-padded)
                _, _, _, size = struct.unpack_from("iIII", events)
                self.begun += events[16:16 + size].rstrip(b"\0").decode().endswith(TEMPORARY_SUFFIX)
                events = events[16 + size:]

    def wait_for(self, count: int, timeout: float) -> bool:
        """Until the `count`-th save since the watch began has begun (True), or `timeout` seconds (False)."""
        deadline = time.monotonic() + timeout
        self._read()
        while self.begun < count:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if select.select([self.fd], [], [], left)[0]:
                self._read()
        return True


def _without_api_nodes(comfy_root: str) -> tuple[str, ...]:
    """ComfyUI's API nodes (0.33 has the switch) take a sixth of each start and nothing here uses them."""
    with open(os.path.join(comfy_root, "comfy", "cli_args.py")) as f:
        return ("--disable-api-nodes",) if "--disable-api-nodes" in f.read() else ()


def crash_trial(comfy_root: str, work: str, kills: int, seed: int, steps: int) -> CrashReport:
    """The reference run, then `kills` killed runs and the resumed end, in `work`; the report of what was seen."""
    from infusion.training.session import resume_path
    from infusion.training.state import load_state
    from infusion_dev import tiny_models

    report, lean = CrashReport(), _without_api_nodes(comfy_root)
    checkpoint = tiny_models.write_tiny_sd15_checkpoint(os.path.join(work, "checkpoint.safetensors"))
    photos = tiny_models.write_concept_photos(os.path.join(work, "photos"))
    reference = _base(os.path.join(work, "reference"), checkpoint)
    expected = os.path.join(reference, "models", "infusion")
    with h.Server(comfy_root, reference, lean) as server:
        started = time.monotonic()
        first_save = _run_to_end(server, _prompt(photos, steps, resume=False), expected)
        training = time.monotonic() - started - first_save  # the steps and their saves
    report.timing = f"uninterrupted: first file after {first_save:.1f} s, then {training:.1f} s"
    crashed = _base(os.path.join(work, "crashed"), checkpoint)
    folder = os.path.join(crashed, "models", "infusion")
    os.makedirs(folder)  # watched from the first kill on
    rng = random.Random(seed)
    for kill in range(kills):
        stale = _saves_in_progress(folder)
        resumable = os.path.exists(resume_path(folder, NAME))
        left = steps - (load_state(resume_path(folder, NAME)).step if resumable else 0)
        with h.Server(comfy_root, crashed, lean) as server, SaveWatch(folder) as saves:
            _queue(server, _prompt(photos, steps, resume=resumable))
            # Counted in saves (two a step: the snapshot, then the resume state), not in seconds, so that how
            # far a run gets does not depend on the machine's speed: at most a quarter of the steps left shared
            # among the kills left, one step at the least, so with twice as many steps as kills the run still
            # has steps to do when the last kill comes.
            if rng.random() < 0.2:  # while the run loads the model, encodes, reads its resume state
                saves.wait_for(1, rng.uniform(0, first_save))
            else:
                count = rng.randint(1, 2 * max(1, left // (4 * (kills - kill))))
                begun = saves.wait_for(count, HANG_AFTER * (first_save + training))
                if begun and rng.random() < 0.5:
                    report.kills_at_a_save += 1  # the count-th save has just begun
                else:  # between two saves, in a step
                    saves.wait_for(count + 1, rng.uniform(0, training / steps))
            server.process.kill()
            server.process.wait()
            report.kills += 1
        _check_files(folder, report, stale)
        if os.path.exists(resume_path(folder, NAME)):
            report.steps_at_kills.append(load_state(resume_path(folder, NAME)).step)
    with h.Server(comfy_root, crashed, lean) as server:
        _run_to_end(server, _prompt(photos, steps, resume=os.path.exists(resume_path(folder, NAME))), folder)
    _compare(expected, folder, report)
    return report


def _compare(expected: str, got: str, report: CrashReport) -> None:
    """The same files, byte for byte (locks aside); no temporary file left."""
    names = lambda folder: sorted(e for e in os.listdir(folder) if not e.endswith(".lock"))  # noqa: E731
    if names(expected) != names(got):
        report.mismatches.append(f"files: expected {names(expected)}, got {names(got)}")
    for entry in names(expected):
        other = os.path.join(got, entry)
        with open(os.path.join(expected, entry), "rb") as a:
            same = os.path.exists(other) and a.read() == open(other, "rb").read()
        report.files_checked += 1
        if not same:
            report.mismatches.append(entry)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=60, help="the training's steps (a snapshot every step)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        # This process builds the checkpoint and the prompts with ComfyUI's code; its folders stay in `work`.
        root = h.start_comfy(["--cpu", "--base-directory", os.path.join(work, "driver")])
        report = crash_trial(root, work, args.kills, args.seed, args.steps)
    print(report.summary())
    for line in report.corrupt + report.mismatches:
        print("  ", line)
    raise SystemExit(1 if report.corrupt or report.mismatches else 0)


if __name__ == "__main__":
    main()
