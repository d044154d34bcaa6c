"""The benchmark scripts' FLUX.1-shaped runs reach their reports (test_benchmarks.py: the UNet-shaped ones)."""
import pytest

from test_benchmarks import run_to_report

RUNS = {
    "apply_overhead.py flux": (["--model", "flux", "--width", "128", "--size", "64", "--steps", "1", "--repeats", "1"],
                               "ratio"),
    "train_step_ratio.py flux": (["--model", "flux", "--width", "128", "--size", "64", "--batch", "1", "--repeats", "1"],
                                 "ratio"),
    "train_vs_lora.py flux": (["--model", "flux", "--width", "128", "--size", "64", "--batch", "1", "--steps", "1", "2"],
                              "infusion"),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_dit_benchmark_runs_to_its_report(comfy_path, script, tmp_path):
    run_to_report(comfy_path, script, *RUNS[script], tmp_path)
