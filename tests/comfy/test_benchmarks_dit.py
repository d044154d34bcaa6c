"""The benchmark scripts' FLUX.1-shaped runs reach their reports (test_benchmarks.py: the UNet-shaped ones)."""
import pytest

from test_benchmarks import run_in_process, run_to_report

RUNS = {
    "apply_overhead.py flux": (["--model", "flux", "--width", "128", "--size", "64", "--steps", "1", "--repeats", "1"],
                               "ratio"),
    "train_step_ratio.py flux": (["--model", "flux", "--width", "128", "--size", "64", "--batch", "1", "--repeats", "1"],
                                 "ratio"),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_dit_benchmark_runs_to_its_report(pack, script, capsys, monkeypatch):
    run_in_process(script, *RUNS[script], capsys, monkeypatch)


def test_train_vs_lora_runs_to_its_report_on_a_flux(comfy_path, tmp_path):
    """In processes of its own: each trainer's peak memory is its own process's. With gradient checkpointing,
    the only way Train LoRA trains a Flux (the UNet's smoke runs without)."""
    run_to_report(comfy_path, "train_vs_lora.py", ["--model", "flux", "--width", "128", "--size", "64", "--batch",
                                                   "1", "--steps", "1", "2", "--checkpointing", "on"],
                  "infusion", tmp_path)
