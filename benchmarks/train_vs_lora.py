"""Infusion training vs ComfyUI's own Train LoRA node (rank 1): step time and peak memory on the
same model, batch and resolution (goal: time ratio <= 0.8, peak memory no higher).

Step time: (time of a run of N2 steps - time of a run of N1 steps) / (N2 - N1), so setup and
encoding cancel out. Peak memory: each trainer runs in its own fresh process and reports its peak
resident memory (Linux VmHWM, reset before training) above what it held just before training.
SD1.5-shaped random UNet, or a FLUX.1-shaped DiT (--model flux), on CPU, fp32. ComfyUI's Train LoRA
trains a Flux only with its gradient checkpointing (Flux's blocks add to their inputs in place, which its
plain backward refuses) and, on 0.3.64, not at all (its RMSNorm weights stay inference tensors); the
script then says so instead of a ratio. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/train_vs_lora.py [--model flux] [--width 64 --size 256 --batch 2]
        [--checkpointing off|on|both]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step_ratio import add_model_options, describe, model_width, setup, zero_concept  # noqa: E402


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident size (VmHWM) to the current one."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def infusion_run(pack, model, conds, latents, steps: int, batch: int, checkpointing: bool) -> None:
    from infusion_dev import comfy_harness as h
    P = lambda name: h.pack_submodule(pack, name)  # noqa: E731
    start = zero_concept(pack, model)
    settings = P("infusion.training.loop").TrainingSettings(steps=steps, batch_size=batch, gradient_accumulation=1,
                                                            flip=False, precision="fp32")
    P("infusion.training.comfy_model").train_on_model(model, start, conds, latents, settings,
                                                      gradient_checkpointing_on=checkpointing)


def lora_run(pack, model, conds, latents, steps: int, batch: int, checkpointing: bool) -> None:
    from infusion_dev import comfy_harness as h
    h.pack_submodule(pack, "infusion.compat").train_lora(
        model, {"samples": latents.latents}, conds[0], batch_size=batch, steps=steps, grad_accumulation_steps=1,
        learning_rate=0.0005, rank=1, optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="fp32",
        lora_dtype="fp32", algorithm="LoRA", gradient_checkpointing=checkpointing, existing_lora="[None]")


def measure(trainer: str, kind: str, width: int, size: int, batch: int, steps: tuple[int, int],
            checkpointing: bool) -> dict:
    pack, model, conds, latents = setup(kind, width, size)
    run = infusion_run if trainer == "infusion" else lora_run
    run(pack, model, conds, latents, 1, batch, checkpointing)  # warm-up
    reset_peak()
    before = status_kib("VmRSS")
    times = []
    for n in steps:
        t = time.perf_counter()
        run(pack, model, conds, latents, n, batch, checkpointing)
        times.append(time.perf_counter() - t)
    peak = status_kib("VmHWM")
    return {"step_s": (times[1] - times[0]) / (steps[1] - steps[0]), "peak_mib": (peak - before) / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_options(parser)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs=2, default=(3, 13), help="N1 N2")
    parser.add_argument("--checkpointing", choices=["off", "on", "both"], default="both",
                        help="with gradient checkpointing, without, or one run each (default)")
    parser.add_argument("--only", choices=["infusion", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.width = model_width(args)
    if args.only:
        print(json.dumps(measure(args.only, args.model, args.width, args.size, args.batch, tuple(args.steps),
                                 args.checkpointing == "on")))
        return
    print(f"{describe(args.model, args.width)}, {args.size} px, batch {args.batch}, CPU fp32")
    for checkpointing in ("off", "on") if args.checkpointing == "both" else (args.checkpointing,):
        label = "with" if checkpointing == "on" else "without"
        results = {}
        for trainer in ("infusion", "lora"):
            out = subprocess.run([sys.executable, __file__, "--only", trainer, "--model", args.model, "--width",
                                  str(args.width), "--size", str(args.size), "--batch", str(args.batch),
                                  "--checkpointing", checkpointing, "--steps", *map(str, args.steps)],
                                 capture_output=True, text=True)
            if out.returncode:
                why = (out.stderr.strip().splitlines() or ["(no message)"])[-1]
                results[trainer] = None
                print(f"  {trainer} {label} gradient checkpointing did not run: {why[:300]}")
                if trainer == "infusion":
                    raise SystemExit(1)
                continue
            results[trainer] = json.loads(out.stdout.strip().splitlines()[-1])
        inf, lora = results["infusion"], results["lora"]
        print(f"{label} gradient checkpointing:")
        if lora is None:
            print(f"  step time  Infusion {1000 * inf['step_s']:7.1f} ms   (no LoRA ratio: Train LoRA did not run)")
            continue
        print(f"  step time  Infusion {1000 * inf['step_s']:7.1f} ms   LoRA r1 {1000 * lora['step_s']:7.1f} ms   "
              f"ratio {inf['step_s'] / lora['step_s']:.2f} (goal <= {0.5 if args.model == 'flux' else 0.8})")
        print(f"  peak mem   Infusion {inf['peak_mib']:7.1f} MiB  LoRA r1 {lora['peak_mib']:7.1f} MiB  "
              f"ratio {inf['peak_mib'] / max(lora['peak_mib'], 1e-9):.2f} "
              f"(goal <= {0.5 if args.model == 'flux' else 1})")


if __name__ == "__main__":
    main()
