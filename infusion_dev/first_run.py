"""The first run: Infusion learning a concept in a world small enough to train on a CPU in minutes.

    bash .ci/first-run                      # sets up Python and ComfyUI's requirements, then runs this
    python -m infusion_dev.first_run [--out DIR]

The toy world's base model (ComfyUI's own UNet, trained here on coloured shapes on four backgrounds) draws
"a triangle" in any colour. Five photos of a green triangle on stripes go through the real Train Infusion
Concept node at its defaults; the concept applied, "a triangle on <background>" draws the green triangle on
every background, while prompts without the word stay the base model's bit for bit. A probe reads colour,
shape and background off every sample; the picture has the base model's row and the concept's.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

PER_BACKGROUND = 8
SEED = 300
OTHER_PROMPTS = ("a red ring on checks", "a blue cross", "a yellow square on black")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infusion_dev.first_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join("benchmarks", "out", "first_run"),
                        help="folder for the picture (default: benchmarks/out/first_run)")
    args = parser.parse_args(argv)
    started = time.perf_counter()

    from .comfy_harness import load_pack, setup_comfy
    setup_comfy()
    load_pack()
    import comfy.utils
    comfy.utils.set_progress_bar_enabled(False)  # this script says what happens
    from .toyworld import customize as cz
    from .toyworld import model as world
    from .toyworld.pictures import grid_png
    from .toyworld.sampling import sample
    from .toyworld.train import load_probe

    model, clip = world.load()
    probe = load_probe()
    concept_name = cz.KNOWN.name
    print(f"The toy world's base model, asked for 'a {cz.WORD} on <background>' ({PER_BACKGROUND} samples each):")
    base = cz.context_samples(model, clip, probe, PER_BACKGROUND, SEED)
    print(f"  {concept_name}: {base.concept_rate(cz.KNOWN):.0%} of samples (colours read: {base.colours()})")

    print(f"Training an Infusion concept on 5 photos of {concept_name} on {cz.PHOTO_BACKGROUND}, through the "
          "Train Infusion Concept node at its defaults ...", flush=True)
    trained_at = time.perf_counter()
    concept = cz.train_infusion(model, clip, cz.KNOWN.photos())
    print(f"  trained in {time.perf_counter() - trained_at:.0f} s: {len(concept.values)} layers, "
          f"{sum(v.numel() for v in concept.values.values())} numbers")
    applied, word_clip = cz.apply_infusion(model, clip, concept)
    drawn = cz.context_samples(applied, word_clip, probe, PER_BACKGROUND, SEED)
    print(f"With the concept: {concept_name} in {drawn.concept_rate(cz.KNOWN):.0%} of samples, on the asked "
          f"background in {drawn.context_rate():.0%}")

    exact = all(torch.equal(sample(applied, word_clip, prompt, 4, seed=7), sample(model, clip, prompt, 4, seed=7))
                for prompt in OTHER_PROMPTS)
    print(f"Prompts without the word ({'; '.join(OTHER_PROMPTS)}): "
          f"{'the base model exactly, bit for bit' if exact else 'CHANGED (a bug: please report it)'}")

    os.makedirs(args.out, exist_ok=True)
    picture = os.path.join(args.out, "first_run.png")
    grid_png([("base model", base.latents), (f"+ Infusion: {concept_name}", drawn.latents)], picture, per_cell=4)
    print(f"Concept rate: {base.concept_rate(cz.KNOWN):.0%} before, {drawn.concept_rate(cz.KNOWN):.0%} after. "
          f"Picture: {picture} ({time.perf_counter() - started:.0f} s in all)")
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
