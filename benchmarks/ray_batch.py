"""The train command's batch on Ray against the local batch: rows per hour with 1 and 2 workers, and the time of a
row through Ray over the local batch's (goal: at most 1.05 for a row of 500 steps).

The rows are the train command's own prompts (Load Checkpoint -> Load Concept Photos -> Train Infusion Concept ->
Save Image) on a tiny SD1.5-layout checkpoint, 64 px, batch 2, no previews, no snapshots, a seed per row: the
toy world is no checkpoint file, and the runner loads checkpoints. Each way first trains a one-step row on every
worker (the checkpoint loaded, as a batch's first row does); startup (Ray, the workers' ComfyUI) is printed
apart. Then timed batches, each Ray batch beside a local batch in this process run just before it (this
machine's speed drifts), medians of the rounds. One worker has every CPU of this machine (as the local batch),
two share them. Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/ray_batch.py [--steps 500] [--rows 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
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
    parser.add_argument("--rows", type=int, default=2, help="rows of each timed batch (even: two workers share it)")
    parser.add_argument("--rounds", type=int, default=3, help="timed batches each way, alternating with the local one")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], choices=[1, 2], help="the Ray worker counts")
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

        def batch(count: int, steps: int, tag: str) -> list[dict]:
            return rows(definitions, checkpoint, photos, count, steps, tag)

        def local(prompts):
            return [train.run_row(quiet, definitions, p) for p in prompts]

        timed(local, batch(1, 1, "warm"))
        # This machine's speed drifts: each Ray batch is timed beside a local batch run just before it.
        seconds: dict[str, list[float]] = {}
        for count in args.workers:
            started = time.monotonic()
            with workers_of(Cluster("", comfy_root, count, comfy_args, path, None, False)) as (ray, workers):
                def on_ray(prompts):
                    return run_batch(ray, workers, prompts)

                timed(on_ray, batch(count, 1, f"warm{count}"))
                print(f"Ray, {count} worker(s): startup {time.monotonic() - started:.1f} s (Ray, the workers' ComfyUI "
                      "and checkpoint)", flush=True)
                for n in range(args.rounds):
                    for way, run in ((f"local{count}", local), (f"ray{count}", on_ray)):
                        seconds.setdefault(way, []).append(timed(run, batch(args.rows, args.steps, f"{way}_{n}")))
                        print(f"  {way}: {args.rows} rows of {args.steps} steps in {seconds[way][-1]:.1f} s",
                              flush=True)

    median = {way: statistics.median(times) for way, times in seconds.items()}
    for count in args.workers:
        ray_way, local_way = f"ray{count}", f"local{count}"
        print(f"\nRay, {count} worker(s): {3600 * args.rows / median[ray_way]:.0f} rows per hour (the local batch "
              f"beside it {3600 * args.rows / median[local_way]:.0f}); ratio, a row's time through Ray / in the local "
              f"batch: {median[ray_way] / median[local_way]:.3f} (medians of {args.rounds}; goal for 1 worker <= 1.05)")
    if len(args.workers) == 2:
        print(f"ratio, rows per hour with 2 workers / 1 worker (each against its local batch): "
              f"{(median['local2'] / median['ray2']) / (median['local1'] / median['ray1']):.3f}")


if __name__ == "__main__":
    main()
