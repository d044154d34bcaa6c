"""The training benchmarks (against Train LoRA, on a GPU-sized plan at toy size, with previews) reach their
reports (test_benchmarks.py: the rest)."""
import pytest

from test_benchmarks import run_to_report

RUNS = {
    "train_vs_lora.py": (["--channels", "32", "--size", "64", "--batch", "1", "--steps", "1", "2"], "ratio"),
    "gpu_train.py": (["--smoke", "--steps", "1"], "peak"),
    "preview_cost.py": (["--channels", "32", "--size", "64", "--steps", "2"], "ratio"),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_training_benchmark_runs_to_its_report(comfy_path, script, tmp_path):
    run_to_report(comfy_path, script, *RUNS[script], tmp_path)
