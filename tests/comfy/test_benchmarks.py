"""Every benchmark script runs to its report on this ComfyUI (at toy sizes: this checks that they
work, never what they measure)."""
import os
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


def run_to_report(comfy_path: str, script: str, args: list[str], expected: str, tmp_path) -> None:
    """Runs `script` with `args` ("{tmp}" replaced by tmp_path) and checks its output names `expected`."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, script.split()[0]), *args], capture_output=True,
                          text=True, timeout=h.HANG, env={**os.environ, "COMFYUI_PATH": comfy_path, "OUT": ""})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert expected in done.stdout.lower(), done.stdout[-3000:]


@pytest.mark.parametrize("script", sorted(RUNS))
def test_benchmark_runs_to_its_report(comfy_path, script, tmp_path):
    run_to_report(comfy_path, script, *RUNS[script], tmp_path)
