"""The toy world's benchmark reaches its report on both models. Each smoke run (2 sampler steps, one sample per
background) takes one table: the UNet's the defaults on a rescaled copy, the DiT's the steps curve; every table in
one run took over 10 minutes a model here, and the full runs exercise the rest. One thread each, as every process
in CI: the other test worker has the other core."""
import pytest

from test_benchmarks import run_in_process, run_to_report

RUNS = {
    "toyworld.py": (["--smoke", "--threads", "1", "--tables", "rescale", "--rescale", "layers", "--out", "{tmp}"],
                    "rescaled copies"),
    "toyworld.py dit": (["--model", "dit", "--smoke", "--threads", "1", "--tables", "steps", "--out", "{tmp}"],
                        "concept rate against"),
}


@pytest.mark.parametrize("script", sorted(RUNS))
def test_toyworld_benchmark_runs_to_its_report(comfy_path, script, tmp_path):
    run_to_report(comfy_path, script, *RUNS[script], tmp_path)


def test_precision_benchmark_runs_to_its_report(pack, capsys, monkeypatch):
    """In this process: it sets ComfyUI up as the tests do (2 steps in fp32 and in bf16, a sample a background)."""
    run_in_process("precision_toyworld.py", ["--steps", "2", "--per-background", "1", "--precisions", "fp32", "bf16"],
                   "against fp32", capsys, monkeypatch)
