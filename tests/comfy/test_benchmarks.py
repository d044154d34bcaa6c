"""Every benchmark script runs to its report on this ComfyUI (at toy sizes: this checks that they
work, never what they measure)."""
import os
import runpy
import subprocess
import sys

import pytest

from infusion_dev import comfy_harness as h

BENCHMARKS = os.path.join(h.PACK_ROOT, "benchmarks")
# UNet-shaped. The runs are spread over four files so that CI's two workers share them (test_benchmarks_train.py,
# test_benchmarks_toyworld.py, test_benchmarks_dit.py).
RUNS = {
    "apply_overhead.py": (["--channels", "32", "--size", "64", "--steps", "1", "--repeats", "1"], "ratio"),
    "train_step_ratio.py": (["--channels", "32", "--size", "64", "--batch", "1", "--repeats", "1"], "ratio"),
    "planted_concept.py": (["--steps", "2", "--batch", "1"], "cosine"),
    "bucket_cost.py": (["--channels", "32", "--size", "128", "--batch", "1", "--repeats", "1", "--rounds", "1"],
                       "ratio"),
    "lfd_cost.py": (["--latent-size", "8", "--samples", "2", "--prompts", "1", "--timesteps", "1", "--repeats", "1"],
                    "ratio"),
}


def run_in_process(script: str, args: list[str], expected: str, capsys, monkeypatch) -> None:
    """Runs `script` with `args` as `python script args` would, in this test process: ComfyUI is imported here
    already (the script's h.setup_comfy() and h.load_pack() find it), where a fresh process would spend most of a
    smoke run importing it again. Checks its output names `expected`."""
    path = os.path.join(BENCHMARKS, script.split()[0])
    monkeypatch.setattr(sys, "argv", [path, *args])
    monkeypatch.delenv("OUT", raising=False)  # no result files
    h.release_models()  # the session's cached models, new to the script as in a fresh process
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as e:
        assert not e.code, f"{script} exited with {e.code}"
    finally:
        h.release_models()  # and never seen by later tests: a script may leave state in them (lfd_cost's LoRA)
    out = capsys.readouterr().out
    assert expected in out.lower(), out[-3000:]


def run_to_report(comfy_path: str, script: str, args: list[str], expected: str, tmp_path) -> None:
    """Runs `script` with `args` ("{tmp}" replaced by tmp_path) in a fresh process, for a script that configures
    ComfyUI its own way or starts processes of its own; checks its output names `expected`."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script.split()[0]), *args], capture_output=True,
                          text=True, timeout=h.HANG, env={**os.environ, "COMFYUI_PATH": comfy_path, "OUT": ""})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert expected in done.stdout.lower(), done.stdout[-3000:]


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_to_its_report(pack, script, capsys, monkeypatch):
    run_in_process(script, *RUNS[script], capsys, monkeypatch)
