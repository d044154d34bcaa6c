"""The training benchmarks (against Train LoRA, on a GPU-sized plan at toy size, with previews) reach their
reports (test_benchmarks.py: the rest)."""
import pytest

from test_benchmarks import run_in_process, run_to_report

RUNS = {
    "gpu_check.py": (["--smoke", "--steps", "2", "--cases", "sd15-bf16", "flux-fp8"], "same seed twice"),
    "weight_memory.py": (["--small"], "ratio"),
    "preview_cost.py": (["--channels", "32", "--size", "64", "--steps", "2"], "ratio"),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_training_benchmark_runs_to_its_report(pack, script, capsys, monkeypatch):
    run_in_process(script, *RUNS[script], capsys, monkeypatch)


def test_train_vs_lora_runs_to_its_report(comfy_path, tmp_path):
    """In processes of its own: each trainer's peak memory is its own process's. Without gradient checkpointing
    (the Flux's smoke runs with)."""
    run_to_report(comfy_path, "train_vs_lora.py", ["--channels", "32", "--size", "64", "--batch", "1", "--steps",
                                                   "1", "2", "--checkpointing", "off"], "ratio", tmp_path)
