"""The train command's batch on a local Ray cluster (`--ray`, infusion/cli/cluster.py), each run a fresh
`python -m infusion train` process as a user starts it, two workers of one CPU each, the tiny SD1.5-layout
checkpoint. Against the local batch of the same file (one thread, as each Ray worker has): every file the
same bit for bit, though a worker was killed in the middle of the long row; the bad row fails alone; Ctrl-C
cancels every running row, each keeping its last step.

Needs Ray (CI installs it; elsewhere `pip install ray`, else skipped).
"""
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from infusion_dev import comfy_harness as h
from infusion_dev import smoke as smoke_mod

try:
    import ray  # noqa: F401
except ImportError:
    # CI installs it (.ci/requirements-*.txt): there a missing Ray is a failure, never a silent skip.
    (pytest.fail if os.environ.get("CI") == "true" else pytest.skip)("needs Ray: pip install ray",
                                                                     allow_module_level=True)

LONG = "rex_long"  # the row whose worker is killed: enough steps that it is still training when its first save lands
ROWS = f"""photos,word,output_name,seed,steps
dog,dog,rex,1,3
teapot,teapot,pot,2,3
dog,dog,{LONG},3,40
teapot,teapot,pot2,4,3
missing,dog,ghost,5,3
"""
SETTINGS = ["--batch-size", "2", "--gradient-accumulation", "1", "--resolution", str(smoke_mod.IMAGE_SIZE),
            "--templates", "a photo of a {}", "--precision", "fp32", "--save-every", "1",
            "--no-gradient-checkpointing", "--sample-every", "0"]


@pytest.fixture(scope="module")
def work(comfy_path, sd15_checkpoint, tmp_path_factory):
    from infusion_dev import tiny_models

    root = tmp_path_factory.mktemp("ray")
    (root / "checkpoint").write_text(sd15_checkpoint)
    for i, word in enumerate(("dog", "teapot")):
        tiny_models.write_concept_photos(str(root / word), seed=tiny_models.SEED + 10 + i)
    (root / "rows.csv").write_text(ROWS)
    return root


def _command(work, output: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "infusion", "train", "--checkpoint", (work / "checkpoint").read_text(), "--batch",
            str(work / "rows.csv"), *SETTINGS, "--output-folder", str(work / output), *extra, "--",
            "--base-directory", str(work / "comfy")]


def _env(comfy_path) -> dict:
    # One thread, as Ray gives each worker of one CPU: the local batch is then the same arithmetic.
    return {**os.environ, "COMFYUI_PATH": comfy_path, "OMP_NUM_THREADS": "1"}


class _Driver:
    """A `--ray` run in its own process group (as a terminal's foreground job), its output read as it comes."""

    def __init__(self, command: list[str], env: dict):
        # Ctrl-C's default action restored: a shell's background job (a CI runner's, say) starts with it ignored.
        self.process = subprocess.Popen(command, cwd=h.PACK_ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, pattern: str) -> re.Match:
        """The first line matching `pattern`; fails if the run ends (or hangs for HANG) without one."""
        deadline = time.monotonic() + h.HANG
        while True:
            ended = not self.reader.is_alive()  # before reading: every line is in by then
            found = next((m for m in map(re.compile(pattern).search, list(self.lines)) if m), None)
            if found:
                return found
            assert not ended and time.monotonic() < deadline, f"no '{pattern}' in:\n{self.output}"
            time.sleep(0.02)

    def finish(self) -> int:
        code = self.process.wait(timeout=h.HANG)
        self.reader.join()
        return code

    @property
    def output(self) -> str:
        return "".join(self.lines)


def _wait_for_file(path: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + h.HANG
    while not os.path.exists(path):
        assert process.poll() is None and time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _files(folder) -> dict[str, bytes]:
    """Every concept, snapshot and resume state in a concept folder."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".resume")}


@pytest.fixture(scope="module")
def local(work, comfy_path):
    """The local batch of the same file: the reference."""
    done = subprocess.run(_command(work, "local"), cwd=h.PACK_ROOT, env=_env(comfy_path), capture_output=True,
                          text=True, timeout=h.HANG)
    assert done.returncode == 1, done.stdout + done.stderr  # the bad row
    return _files(work / "local")


@pytest.fixture(scope="module")
def killed(work, comfy_path):
    """The batch on two Ray workers; the long row's worker is killed (SIGKILL, by its process id) the moment
    the row's first resume state exists."""
    driver = _Driver(_command(work, "ray", "--ray", "--workers", "2"), _env(comfy_path))
    pid = int(driver.wait_for(rf"\] {LONG}: started on worker pid (\d+)").group(1))
    _wait_for_file(str(work / "ray" / f"{LONG}.resume"), driver.process)
    os.kill(pid, signal.SIGKILL)
    return driver.finish(), driver.output, pid


def test_rows_on_ray_give_the_local_batchs_files_bit_for_bit(local, killed, work):
    code, output, _ = killed
    got = _files(work / "ray")
    concepts = {name for name in local if name.endswith(".safetensors") and "_step" not in name}
    assert concepts == {"rex.safetensors", "pot.safetensors", f"{LONG}.safetensors", "pot2.safetensors"}
    assert sorted(got) == sorted(local), output  # with every snapshot and resume state
    assert [name for name in local if got[name] != local[name]] == [], output
    for name in ("rex", "pot", LONG, "pot2"):
        assert re.search(rf"^\d+\s+{name}\s+done\s", output, re.M), output  # the summary table


def test_a_killed_workers_row_is_retried_and_resumed_from_its_saved_step(killed):
    code, output, pid = killed
    assert re.search(rf"\] {LONG}: its worker \(worker pid {pid} on .*\) died", output), output
    again = re.search(rf"\] {LONG}: started on worker pid (\d+) .*\(attempt 2 of 3\)", output)
    assert again and int(again.group(1)) != pid, output
    resumed = re.search(rf"\] {LONG} \(resumed from step (\d+)\):", output)
    assert resumed and 1 <= int(resumed.group(1)) < 40, output  # continued, neither started over nor finished


def test_a_bad_row_fails_alone_with_its_message_and_the_exit_code_says_so(killed):
    code, output, _ = killed
    assert code == 1, output
    assert "failed: ValueError: photo folder not found" in output and "1 of 5 concepts failed" in output, output
    assert re.search(r"^5\s+ghost\s+failed\s", output, re.M), output


CANCEL_ROWS = """photos,word,output_name,seed,steps
dog,dog,first,1,400
teapot,teapot,second,2,400
dog,dog,third,3,3
"""


def test_ctrl_c_cancels_every_running_row_keeping_its_last_step(work, comfy_path):
    """Ctrl-C as a terminal sends it (SIGINT to the driver's process group) while two rows train: both save
    their last step with a resume state, the third never starts, the exit code is 130."""
    from infusion.format import load_concept
    from infusion.training.state import load_state

    (work / "cancel.csv").write_text(CANCEL_ROWS)
    command = _command(work, "cancel", "--ray", "--workers", "2")
    command[command.index("--batch") + 1] = str(work / "cancel.csv")
    driver = _Driver(command, _env(comfy_path))
    for name in ("first", "second"):
        _wait_for_file(str(work / "cancel" / f"{name}.resume"), driver.process)
    os.killpg(driver.process.pid, signal.SIGINT)
    code, output = driver.finish(), driver.output
    assert code == 130, output
    for name, word in (("first", "dog"), ("second", "teapot")):
        step = int(re.search(rf"^\d+\s+{name}\s+cancelled\s+(\d+)\s", output, re.M).group(1))
        assert 1 <= step < 400 and load_state(str(work / "cancel" / f"{name}.resume")).step == step, output
        assert load_concept(str(work / "cancel" / f"{name}.safetensors")).word == word  # the last step, saved
    assert re.search(r"^3\s+third\s+not run\s", output, re.M) and not (work / "cancel" / "third.resume").exists()


def test_the_ray_benchmark_runs_to_its_report(comfy_path, tmp_path):
    """benchmarks/ray_batch.py at toy size, one worker (this checks that it works, never what it measures; the
    two-worker batches run the same code with another count)."""
    from test_benchmarks import run_to_report
    run_to_report(comfy_path, "ray_batch.py", ["--steps", "1", "--rows", "2", "--rounds", "1", "--workers", "1"],
                  "ratio", tmp_path)
