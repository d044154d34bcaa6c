"""Planted concept, long run: can training recover known residual vectors? (goal: every layer's
value-space cosine >= 0.95; the test, tests/comfy/test_train_planted.py, asks >= 0.8 in 120 steps)

A teacher is the base model plus planted residuals u*_l (text space, one per cross-attention
layer, N(0, 1)); the student starts at zero and trains with AdamW (constant lr, no weight decay) in value
space, as the node does, on the teacher's predictions. Printed: the loss fall and, per layer, cos(W_v u, W_v u*) (the
part of a text-space vector in W_v's null space changes nothing and cannot be learned).
Tiny SD1.5-shaped UNet with fan-in-scaled random weights, 128 px, on CPU; the setup is the
test's (imported from it). Usage:
    COMFYUI_PATH=/path/to/ComfyUI python benchmarks/planted_concept.py [--steps 600 --lr 0.05]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository: infusion_dev
from infusion_dev import comfy_harness as h  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    h.setup_comfy()
    pack = h.load_pack()
    from infusion_dev import planted

    _, clip = h.tiny_sd15()
    start = time.perf_counter()
    state, cosines = planted.train_planted(pack, planted.fan_in_sd15(args.seed), clip, args.steps, args.lr,
                                           args.batch, args.seed)
    print(f"{args.steps} steps, batch {args.batch}, AdamW lr {args.lr}: {time.perf_counter() - start:.0f} s")
    print(f"loss fall (mean of the last 10 steps vs the first 10): {100 * planted.loss_fall(state.losses):.1f}%")
    for key, c in cosines.items():
        print(f"  {key:12s} cos {c:.4f}")
    print(f"value-space cosine: min {min(cosines.values()):.4f}, mean {sum(cosines.values()) / len(cosines):.4f}")


if __name__ == "__main__":
    main()
