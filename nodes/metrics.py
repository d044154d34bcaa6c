"""Infusion Metrics nodes: Latent Fisher divergence and Wasserstein-2.

Thin wrappers: the estimators live in ../infusion/metrics. Here ComfyUI supplies the
noise predictions (through its own sampling setup, so LoRA weights, attention patches,
wrappers, hooks and SDXL's extra conds all apply as in a KSampler) and the CLIP
vision features.
"""
from __future__ import annotations

import math

import comfy.model_management
import comfy.model_sampling
import comfy.samplers
import comfy.utils
import torch
from comfy_api.latest import io, ui

from ..infusion.metrics import (DEFAULT_SIGMA_FLOOR, LFDPlan, check_weighting, compare, evaluate,
                                feature_wasserstein, make_plan)

_CACHE_NOTE = " ComfyUI caches the result: the same inputs do not re-run the node."
_IMAGE_CHUNK = 16  # images per CLIP vision call


class _Progress:
    """Advances the node's progress bar and honours Cancel between model calls."""

    def __init__(self, total: int) -> None:
        self.bar = comfy.utils.ProgressBar(total)

    def __call__(self) -> None:
        self.bar.update(1)
        comfy.model_management.throw_exception_if_processing_interrupted()


class _EvaluateSampler(comfy.samplers.Sampler):
    """Stands in for a sampler inside ComfyUI's sampling setup of one model and, instead
    of sampling, evaluates that model's noise prediction on every draw of an LFD plan.

    ComfyUI has then loaded the model (with its LoRA weights), registered its hooks
    and wrappers, and built every prompt's model conds (SDXL's ``y``) for this latent
    size; ``calc_cond_batch`` runs one UNet call per (prompt, timestep) batch.
    """

    def __init__(self, plan: LFDPlan, on_batch: _Progress) -> None:
        self.plan = plan
        self.on_batch = on_batch
        self.table: list[torch.Tensor] = []

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        model = model_wrap.inner_model
        conds = model_wrap.conds["positive"]
        options = extra_args["model_options"]

        def eps(x: torch.Tensor, sigma: torch.Tensor, prompt: int) -> torch.Tensor:
            x, sigma = x.to(noise.device), sigma.to(noise.device)
            denoised = comfy.samplers.calc_cond_batch(model, [[conds[prompt]]], x, sigma, options)[0]
            # apply_model returns x0 for eps and v models alike; x_t = x0 + sigma * eps.
            return (x - denoised) / sigma.view((-1,) + (1,) * (x.ndim - 1))

        self.table = evaluate(self.plan, eps, self.on_batch)
        return latent_image


def _model_sampling(model, name: str):
    sampling = model.get_model_object("model_sampling")
    # EPS covers eps, v-prediction and EDM models: all use x_t = x0 + sigma * eps.
    if not isinstance(sampling, comfy.model_sampling.EPS) or not hasattr(sampling, "sigmas"):
        raise ValueError(f"{name}: the Latent Fisher divergence needs a discrete-time eps or v-prediction "
                         f"model (SD1.x, SD2.x, SDXL); got {type(sampling).__name__}")
    return sampling


def _reference_latents(base_model, custom_model, latent: dict) -> torch.Tensor:
    base_format = base_model.get_model_object("latent_format")
    if type(base_format) is not type(custom_model.get_model_object("latent_format")):
        raise ValueError("the base and customized models use different latent spaces: compare models of one family")
    return base_format.process_in(latent["samples"].float())


def _model_table(model, conditioning: list, plan: LFDPlan, progress: _Progress) -> list[torch.Tensor]:
    """One model's noise predictions on every draw of the plan."""
    sampler = _EvaluateSampler(plan, progress)
    guider = comfy.samplers.CFGGuider(model)
    guider.inner_set_conds({"positive": conditioning})
    # A zero latent: the guider then skips process_latent_in (the plan's latents are
    # already in model space); its shape sets the batch and SDXL's default size conds.
    blank = torch.zeros((plan.batch_size,) + tuple(plan.latents.shape[1:]))
    # Patches that look at the schedule see the sigmas this run evaluates.
    sigmas = torch.cat([plan.sigma.flatten().unique().flip(0), torch.zeros(1)])
    guider.sample(blank, blank, sampler, sigmas, seed=plan.seed)
    return sampler.table


class InfusionLatentFisherDivergence(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfusionLatentFisherDivergence",
            display_name="Infusion Metrics: Latent Fisher Divergence",
            category="Infusion",
            description="Concept-agnostic overfitting: how far a customized model's noise prediction moves "
                        "from the base model's on prompts that do NOT name the concept, averaged over "
                        "timesteps and noised reference latents (same draws for both models). 0 = untouched. "
                        "Works for any customization: Infusion, LoRA, fine-tunes." + _CACHE_NOTE,
            is_output_node=True,
            inputs=[
                io.Model.Input("base_model", tooltip="The base model (SD1.x, SD2.x or SDXL)."),
                io.Model.Input("custom_model", tooltip="The customized model: Infusion-applied, LoRA-patched, "
                                                       "fine-tuned... of the same family as the base model."),
                io.Conditioning.Input("conditioning",
                                      tooltip="Prompts that do not name the concept. Each conditioning entry is "
                                              "one prompt, evaluated on its own: join several CLIP Text Encode "
                                              "outputs with Conditioning (Combine)."),
                io.Latent.Input("reference_latent",
                                tooltip="Clean latents to noise, e.g. the base model's samples for these "
                                        "prompts. Their size sets the resolution evaluated."),
                io.Int.Input("timesteps", default=10, min=1, max=1000,
                             tooltip="Number of timestep strata to average over; each latent/noise draw gets "
                                     "one random timestep in every stratum. The report breaks the result "
                                     "down per stratum."),
                io.Int.Input("samples", default=4, min=2, max=4096,
                             tooltip="Latent/noise draws per (prompt, timestep). Reference latents are used "
                                     "in turn, each equally often. Cost: 2 UNet evaluations per draw, per "
                                     "prompt and timestep."),
                io.Int.Input("seed", default=0, min=0, max=0xffffffffffffffff, control_after_generate=False,
                             tooltip="Seed of every random draw (latent choice, timesteps, noise); keep it "
                                     "fixed to compare several customized models on the same draws."),
                io.Combo.Input("weighting", options=["epsilon", "fisher"], default="epsilon",
                               tooltip="epsilon: |eps_custom - eps_base|^2 (plain epsilon space). fisher: the "
                                       "same divided by sigma^2, the score-space Fisher divergence; sigma is "
                                       f"clamped at {DEFAULT_SIGMA_FLOOR:g} so near-clean timesteps cannot "
                                       "dominate."),
                io.Int.Input("batch_size", default=0, min=0, max=4096, optional=True,
                             tooltip="Most draws per UNet call (lower it if memory runs out). 0 = all "
                                     "samples of a (prompt, timestep) in one call."),
            ],
            outputs=[
                io.Float.Output("lfd", display_name="lfd", tooltip="The Latent Fisher divergence per latent element."),
                io.Float.Output("std_error", display_name="std_error", tooltip="Its standard error over the latent/noise draws."),
                io.String.Output("report", display_name="report", tooltip="Readable summary with the per-timestep breakdown."),
            ],
        )

    @classmethod
    def execute(cls, base_model, custom_model, conditioning, reference_latent, timesteps, samples, seed,
                weighting, batch_size=0) -> io.NodeOutput:
        check_weighting(weighting, DEFAULT_SIGMA_FLOOR)
        sampling = _model_sampling(base_model, "base_model")
        _model_sampling(custom_model, "custom_model")
        plan = make_plan(_reference_latents(base_model, custom_model, reference_latent), sampling.sigmas,
                         len(conditioning), n_timesteps=timesteps, n_samples=samples, seed=seed,
                         batch_size=batch_size or None)
        progress = _Progress(2 * plan.n_batches)
        base = _model_table(base_model, conditioning, plan, progress)
        custom = _model_table(custom_model, conditioning, plan, progress)
        result = compare(plan, base, custom, weighting, DEFAULT_SIGMA_FLOOR)
        report = result.report()
        return io.NodeOutput(result.value, result.stderr, report, ui=ui.PreviewText(report))


def _clip_features(clip_vision, images: torch.Tensor, normalize: bool, progress: _Progress) -> torch.Tensor:
    chunks = []
    for start in range(0, images.shape[0], _IMAGE_CHUNK):
        out = clip_vision.encode_image(images[start:start + _IMAGE_CHUNK], crop=True)
        chunks.append(out["image_embeds"].float().cpu())
        progress()
    features = torch.cat(chunks)
    return torch.nn.functional.normalize(features, dim=-1) if normalize else features


class InfusionWasserstein(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfusionWasserstein",
            display_name="Infusion Metrics: Wasserstein-2",
            category="Infusion",
            description="Concept-specific overfitting: Wasserstein-2 distance, in CLIP vision feature space, "
                        "between the customized model's images of the concept and the base model's images "
                        "of its class in the same varied contexts. Lower = the concept keeps the variety of "
                        "its class. Reports the Gaussian-fit W2 and, for sets of equal size, the exact "
                        "empirical W2." + _CACHE_NOTE,
            is_output_node=True,
            inputs=[
                io.Image.Input("custom_images",
                               tooltip="The customized model's images of the concept in varied contexts "
                                       "(\"a dog on the moon\", \"a watercolor of a dog\", ...). At least 2."),
                io.Image.Input("base_images",
                               tooltip="The base model's images of the class in the same contexts. At least 2; "
                                       "as many as custom_images for the empirical W2."),
                io.ClipVision.Input("clip_vision", tooltip="The CLIP vision model that embeds the images "
                                                           "(Load CLIP Vision)."),
                io.Boolean.Input("normalize", default=True,
                                 tooltip="Scale every embedding to unit length first (cosine geometry, as "
                                         "CLIP similarity uses)."),
            ],
            outputs=[
                io.Float.Output("w2", display_name="w2", tooltip="Wasserstein-2 between Gaussian fits of the two feature sets."),
                io.String.Output("report", display_name="report", tooltip="Readable summary, with the empirical W2."),
            ],
        )

    @classmethod
    def execute(cls, custom_images, base_images, clip_vision, normalize) -> io.NodeOutput:
        progress = _Progress(math.ceil(custom_images.shape[0] / _IMAGE_CHUNK)
                             + math.ceil(base_images.shape[0] / _IMAGE_CHUNK))
        custom = _clip_features(clip_vision, custom_images, normalize, progress)
        base = _clip_features(clip_vision, base_images, normalize, progress)
        result = feature_wasserstein(custom, base)
        report = result.report()
        return io.NodeOutput(result.gaussian, report, ui=ui.PreviewText(report))


NODES: list[type[io.ComfyNode]] = [InfusionLatentFisherDivergence, InfusionWasserstein]
