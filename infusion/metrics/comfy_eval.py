"""The metrics on ComfyUI models and CLIP vision (ComfyUI is imported inside functions only).

Noise predictions come from ComfyUI's own sampling setup, so LoRA weights, attention patches,
wrappers, hooks and SDXL's extra conds all apply as in a KSampler; `calc_cond_batch` runs one
UNet call per (prompt, timestep) batch.
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from ..sampler_context import inside_sampling
from .fisher import DEFAULT_SIGMA_FLOOR, LFDPlan, LFDResult, check_weighting, compare, evaluate, make_plan
from .wasserstein import W2Result, feature_wasserstein

Progress = Callable[[int], Callable[[], None]]  # progress(total steps) -> called once per step
IMAGE_CHUNK = 16  # images per CLIP vision call


def _model_sampling(model: Any, name: str) -> Any:
    import comfy.model_sampling

    sampling = model.get_model_object("model_sampling")
    # EPS covers eps, v-prediction and EDM models (x_t = x0 + sigma * eps), as does 0.33's V_PREDICTION_DDPM
    # (CogVideoX: the same x_t, handed to the model unscaled); CONST the flow-matching ones.
    kinds = (comfy.model_sampling.EPS, comfy.model_sampling.CONST,
             *filter(None, [getattr(comfy.model_sampling, "V_PREDICTION_DDPM", None)]))
    if not isinstance(sampling, kinds) or not hasattr(sampling, "sigmas"):
        raise ValueError(f"{name}: the Latent Fisher divergence needs a discrete-time eps, v-prediction or "
                         f"flow-matching model; got {type(sampling).__name__}")
    return sampling


def _is_flow(sampling: Any) -> bool:
    import comfy.model_sampling
    return isinstance(sampling, comfy.model_sampling.CONST)


def _reference_latents(base_model: Any, custom_model: Any, latent: dict) -> torch.Tensor:
    base_format = base_model.get_model_object("latent_format")
    if type(base_format) is not type(custom_model.get_model_object("latent_format")):
        raise ValueError("the base and customized models use different latent spaces: compare models of one family")
    return base_format.process_in(latent["samples"].float())


def noise_predictions(model: Any, conditioning: list, plan: LFDPlan, on_batch: Callable[[], None]) -> list[torch.Tensor]:
    """One model's noise predictions on every draw of the plan (one entry per conditioning entry), from its
    denoised x0: eps = (x_t - x0) / sigma, or (x_t - (1 - sigma) x0) / sigma for flow matching (which is
    (1 - sigma) times the difference of two models' velocities)."""
    import comfy.samplers

    def body(model_wrap: Any, options: dict) -> list[torch.Tensor]:
        inner, conds, device = model_wrap.inner_model, model_wrap.conds["positive"], model.load_device

        def eps(x: torch.Tensor, sigma: torch.Tensor, prompt: int) -> torch.Tensor:
            x, sigma = x.to(device), sigma.to(device)
            denoised = comfy.samplers.calc_cond_batch(inner, [[conds[prompt]]], x, sigma, options)[0]
            s = sigma.view((-1,) + (1,) * (x.ndim - 1))
            return (x - ((1 - s) * denoised if plan.flow else denoised)) / s

        return evaluate(plan, eps, on_batch)

    # Patches that look at the schedule see the sigmas this run evaluates.
    sigmas = torch.cat([plan.sigma.flatten().unique().flip(0), torch.zeros(1)])
    shape = (plan.batch_size,) + tuple(plan.latents.shape[1:])
    return inside_sampling(model, {"positive": conditioning}, shape, sigmas, plan.seed, body)


def latent_fisher_divergence_between(base_model: Any, custom_model: Any, conditioning: list, reference_latent: dict,
                                     *, n_timesteps: int, n_samples: int, seed: int, weighting: str,
                                     batch_size: int | None, progress: Progress) -> LFDResult:
    """LFD of `custom_model` from `base_model` on the prompts of `conditioning` (common random numbers).

    Every base prediction comes before every customized one: a LoRA clone shares its weights with
    the base model, so ComfyUI swaps the LoRA in once instead of per batch.
    """
    check_weighting(weighting, DEFAULT_SIGMA_FLOOR)
    sampling = _model_sampling(base_model, "base_model")
    _model_sampling(custom_model, "custom_model")
    plan = make_plan(_reference_latents(base_model, custom_model, reference_latent), sampling.sigmas,
                     len(conditioning), n_timesteps=n_timesteps, n_samples=n_samples, seed=seed,
                     batch_size=batch_size, flow=_is_flow(sampling))
    step = progress(2 * plan.n_batches)
    base = noise_predictions(base_model, conditioning, plan, step)
    custom = noise_predictions(custom_model, conditioning, plan, step)
    return compare(plan, base, custom, weighting, DEFAULT_SIGMA_FLOOR)


def clip_features(clip_vision: Any, images: torch.Tensor, normalize: bool, on_chunk: Callable[[], None]) -> torch.Tensor:
    """CLIP vision image embeddings, IMAGE_CHUNK images per call."""
    chunks = []
    for start in range(0, images.shape[0], IMAGE_CHUNK):
        out = clip_vision.encode_image(images[start:start + IMAGE_CHUNK], crop=True)
        chunks.append(out["image_embeds"].float().cpu())
        on_chunk()
    features = torch.cat(chunks)
    return torch.nn.functional.normalize(features, dim=-1) if normalize else features


def image_wasserstein(custom_images: torch.Tensor, base_images: torch.Tensor, clip_vision: Any, normalize: bool,
                      progress: Progress) -> W2Result:
    """W2 between the two image sets in CLIP vision feature space."""
    chunks = -(-custom_images.shape[0] // IMAGE_CHUNK) - (-base_images.shape[0] // IMAGE_CHUNK)
    step = progress(chunks)
    return feature_wasserstein(clip_features(clip_vision, custom_images, normalize, step),
                               clip_features(clip_vision, base_images, normalize, step))
