"""Running code where a ComfyUI sampler would run (ComfyUI is imported inside functions only).

A `comfy.samplers.CFGGuider` with a stand-in sampler: by the time the stand-in's `sample()` is
called, ComfyUI has loaded the model (LoRA weights included), merged its wrappers and hooks
(our word-position carrier among them), and built every conditioning's model inputs for the
latent size (SDXL's `y`); it cleans up afterwards, on success, cancel or error alike.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import torch

Body = Callable[[Any, dict], Any]  # body(model_wrap, model_options); model_wrap.conds[key] are the prepared conds


class _BodySampler:
    """A ComfyUI Sampler (duck-typed) whose sample() runs `body` instead of sampling."""

    def __init__(self, body: Body):
        self.body = body
        self.result: Any = None

    # ComfyUI calls sample(model_wrap, sigmas, extra_args, callback, noise, latent_image, denoise_mask,
    # disable_pbar); whatever a later version adds is accepted and unused.
    def sample(self, model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs):
        self.result = self.body(model_wrap, extra_args["model_options"])
        return torch.zeros_like(noise)


def inside_sampling(model: Any, conds: Mapping[str, list], latent_shape: Sequence[int], sigmas: torch.Tensor,
                    seed: int, body: Body) -> Any:
    """`body(model_wrap, model_options)` inside ComfyUI's sampling setup of `model`.

    `conds` maps names to CONDITIONINGs (prepared for latents of `latent_shape`); `sigmas` is what
    patches that look at the schedule see as the sampling sigmas. Returns what `body` returns.
    """
    import comfy.samplers

    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds(dict(conds))
    sampler = _BodySampler(body)
    # A zero latent: the guider then skips process_latent_in; its shape sets the batch and
    # SDXL's default size conds.
    blank = torch.zeros(tuple(latent_shape))
    guider.sample(blank, blank, sampler, sigmas, seed=seed)
    return sampler.result
