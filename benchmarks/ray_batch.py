"""The train command's batch on Ray against the local batch: rows per hour with 1 and 2 workers, and the time of a
row through Ray over the local batch's (goal: at most 1.05 for a row of 500 steps).

The rows are the train command's own prompts (Load Checkpoint -> Load Concept Photos -> Train Infusion Concept ->
Save Image) on a tiny SD1.5-layout checkpoint, 64 px, batch 2, no previews, no snapshots, a seed per row: the
toy world is no checkpoint file, and the runner loads checkpoints. Each way first trains a one-step row on every
worker (the checkpoint loaded, as a batch's first row does), then the timed batch; startup (Ray, the workers'
ComfyUI) is printed apart. One worker has every CPU of this machine (as the local batch), two share them. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/ray_batch.py [--steps 500] [--rows 4]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: infusion_dev


def rows(definitions, checkpoint: str, photos: dict[str, str], count: int, steps: int, tag: str) -> list[dict]:
    from infusion.cli import train

    settings = {"steps": steps, "batch_size": 2, "gradient_accumulation": 1, "resolution": 64, "precision": "fp32",
                "save_every": 0, "sample_every": 0, "gradient_checkpointing": False, "templates": "a photo of a {}"}
    words = sorted(photos)
    return [train.train_prompt(definitions, checkpoint, train.job_for(photos[words[i % 2]], {
        **settings, "word": words[i % 2], "seed": i, "output_name": f"{tag}_{i}"})) for i in range(count)]


def timed(run, prompts) -> float:
    started = time.monotonic()
    results = run(prompts)
    bad = [r for r in results if r.status != "done"]
    if bad:
        raise SystemExit(f"a row did not finish: {bad[0].name}: {bad[0].status} {bad[0].message}")
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500, help="steps of each row")
    parser.add_argument("--rows", type=int, default=4, help="rows of the timed batch (even: two workers share it)")
    args = parser.parse_args()

    from infusion.cli import runtime, train
    from infusion.cli.cluster import Cluster, run_batch, workers_of
    from infusion.cli.executor import Runner
    from infusion.cli.node_inputs import node_definitions
    from infusion_dev import tiny_models

    with tempfile.TemporaryDirectory() as work:
        comfy_args = ["--cpu", "--base-directory", work, "--disable-api-nodes"]
        comfy_root = runtime.start(comfy_args)
        path = tiny_models.write_tiny_sd15_checkpoint(os.path.join(work, "checkpoint.safetensors"))
        checkpoint = train.model_file("checkpoints", path)
        photos = {w: tiny_models.write_concept_photos(os.path.join(work, w), seed=tiny_models.SEED + 10 + i)
                  for i, w in enumerate(("dog", "teapot"))}
        definitions = node_definitions(train.NODES)
        quiet = Runner(report=lambda event, data: None)

        def local(prompts):
            return [train.run_row(quiet, definitions, p) for p in prompts]

        timed(local, rows(definitions, checkpoint, photos, 1, 1, "warm"))
        seconds = {"local": timed(local, rows(definitions, checkpoint, photos, args.rows, args.steps, "local"))}
        print(f"local batch: {args.rows} rows of {args.steps} steps in {seconds['local']:.1f} s", flush=True)
        for count in (1, 2):
            started = time.monotonic()
            with workers_of(Cluster("", comfy_root, count, comfy_args, path, None, False)) as (ray, workers):
                def on_ray(prompts):
                    return run_batch(ray, workers, prompts)

                timed(on_ray, rows(definitions, checkpoint, photos, count, 1, f"warm{count}"))
                startup = time.monotonic() - started
                seconds[count] = timed(on_ray, rows(definitions, checkpoint, photos, args.rows, args.steps,
                                                    f"ray{count}"))
            print(f"Ray, {count} worker(s): {args.rows} rows in {seconds[count]:.1f} s (startup {startup:.1f} s: Ray, "
                  "the workers' ComfyUI and checkpoint)", flush=True)

    print(f"\nrows per hour: local {3600 * args.rows / seconds['local']:.0f}, "
          f"Ray 1 worker {3600 * args.rows / seconds[1]:.0f}, Ray 2 workers {3600 * args.rows / seconds[2]:.0f}")
    print(f"ratio, a row through Ray (1 worker) / the local batch: {seconds[1] / seconds['local']:.3f} (goal <= 1.05)")
    print(f"ratio, rows per hour with 2 workers / 1 worker: {seconds[1] / seconds[2]:.3f}")


if __name__ == "__main__":
    main()
