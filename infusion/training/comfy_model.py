"""Training through ComfyUI's own model machinery (ComfyUI is imported inside functions only).

The run goes through a `comfy.samplers.CFGGuider` with a sampler whose `sample()` is the whole
training loop, as ComfyUI's own trainer does: the guider loads the model, merges the model's
wrappers (our word-position carrier), computes every conditioning's model inputs once (SDXL's
pooled/size vector `y` included) and cleans up afterwards, also on cancel or error. Each
prediction is `comfy.samplers.calc_cond_batch`, ComfyUI's own batched model call.
"""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from .. import compat
from ..concept import InfusionConcept
from ..families import adapter_for
from ..patching import install, load_weights, trainable_residual, training_space
from ..sampler_context import inside_sampling
from ..value_space import TRAINED_IN, ValueSpace
from .kernels import kernels_with_backward
from .loop import PhotoBuckets, PhotoLatents, TrainingHooks, TrainingSettings, train
from .state import ResumeError, TrainingState
from .vectors import VALUE_SCALES, named_vectors


def _caption_key(i: int) -> str:
    return f"caption{i}"


class ComfyDenoiser:
    """The loop's Denoiser over a model inside a running guider."""

    def __init__(self, guider: Any, model_options: dict, captions: int, device: torch.device,
                 teacher_options: dict | None = None):
        self.model = guider.inner_model
        self.sampling = self.model.model_sampling
        self.conds = [guider.conds[_caption_key(i)] for i in range(captions)]
        self.options = model_options
        self.teacher_options = teacher_options
        self.device = device
        self.num_timesteps = len(self.sampling.sigmas)

    def sigma(self, timesteps: torch.Tensor) -> torch.Tensor:
        # The model's own schedule, by index: model_sampling.sigma() takes each family's own time unit (a
        # UNet's 0-999, Flux's fraction 0-1), so integer steps put a flow model at sigma 0 or >= 1.
        schedule = self.sampling.sigmas
        return schedule[timesteps.to(schedule.device)].to(self.device)

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return self.sampling.noise_scaling(sigma, noise, x0)

    def prediction_scale(self, sigma: torch.Tensor) -> torch.Tensor:
        # b(sigma) of denoised = a x + b F, read off ComfyUI's own formula for this model type
        one = torch.ones((sigma.shape[0], 1, 1, 1), device=sigma.device)
        return self.sampling.calculate_denoised(sigma, one, torch.zeros_like(one)).reshape(-1)

    def _call(self, x_t: torch.Tensor, sigma: torch.Tensor, caption: int, options: dict) -> torch.Tensor:
        import comfy.samplers
        return comfy.samplers.calc_cond_batch(self.model, [self.conds[caption]], x_t, sigma, options)[0]

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, caption: int) -> torch.Tensor:
        return self._call(x_t, sigma, caption, self.options)

    def target(self, x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, caption: int) -> torch.Tensor:
        if self.teacher_options is None:
            return x0
        return self._call(x_t, sigma, caption, self.teacher_options)


def _replace_each(module: torch.nn.Module, names: Sequence[str]) -> None:
    """Each named weight replaced by a frozen copy of itself (as ComfyUI sets weights), one at a time: the
    replaced tensor is let go before the next is copied, so at most one layer is ever held twice. The copies
    are inference tensors inside torch.inference_mode(), ordinary ones outside it."""
    import comfy.utils

    for name in names:
        weight = comfy.utils.get_attr(module, name)
        comfy.utils.set_attr_param(module, name, weight.detach().clone())
        del weight


@contextmanager
def autograd_weights(module: torch.nn.Module) -> Iterator[None]:
    """Frozen weights that backpropagation can pass through, for the duration of training.

    Weights loaded inside ComfyUI's executor are inference tensors, which autograd refuses to save for backward:
    each is swapped for an ordinary copy and let go at once, so the model stays one copy on its device (keeping
    the originals aside held two: 46 GB for FLUX.1 dev in bf16). Afterwards each is made an inference tensor
    again the same way, where it is then (ComfyUI may have moved it), with the same values; ComfyUI 0.33's
    quantized fp8 weights (a tensor subclass) stay ordinary, as no inference copy can be made of them. Weights
    that ask for gradients are frozen meanwhile, so only the residual vectors receive any.
    """
    swapped = [name for name, p in module.named_parameters() if p.is_inference()]
    plain = [name for name, p in module.named_parameters() if p.is_inference() and type(p.data) is torch.Tensor]
    unfrozen = [p for p in module.parameters() if p.requires_grad and not p.is_inference()]
    for p in unfrozen:
        p.requires_grad_(False)
    _replace_each(module, swapped)
    try:
        yield
    finally:
        with torch.inference_mode():
            _replace_each(module, plain)
        for p in unfrozen:
            p.requires_grad_(True)


def _clone_tensors(value: Any) -> Any:
    """Conditioning made in the executor holds inference tensors: ordinary copies for autograd."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _clone_tensors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_clone_tensors(v) for v in value)
    return value


def check_weights_fit(patcher: Any) -> None:
    """Refuse before the first step, with the numbers, a model whose weights alone exceed its GPU's memory:
    training holds every weight on the device (a bigger batch or resolution only adds to it)."""
    import comfy.model_management as mm

    device = patcher.load_device
    if device.type == "cpu":
        return
    weights, total = patcher.model_size(), mm.get_total_memory(device)
    room = total - mm.minimum_inference_memory()
    if weights <= room:
        return
    gib = 2 ** 30
    raise RuntimeError(
        f"this model's weights take {weights / gib:.1f} GiB, more than the {room / gib:.1f} GiB training can use on "
        f"this GPU ({total / gib:.1f} GiB): training keeps every weight on the GPU. Load the model in fp8 (Load "
        f"Diffusion Model's weight_dtype fp8_e4m3fn: about half of bf16's memory), or train on a larger GPU")


def in_sampling(patcher: Any, conditionings: Sequence[list], shape: Sequence[int], seed: int,
                run: Callable[[Any, dict], Any]) -> Any:
    """`run(model_wrap, model_options)` inside ComfyUI's sampling setup of `patcher`, with one
    conditioning per caption (keys caption0, caption1, ...) prepared for latents of `shape`."""
    load_weights(patcher, memory_required=1e20)  # everything else can go: training needs more room than inference
    schedule = patcher.get_model_object("model_sampling").sigmas
    sigmas = torch.cat([schedule.flip(0), schedule.new_zeros(1)])  # seen by patches as sample_sigmas
    conds = {_caption_key(i): _clone_tensors(c) for i, c in enumerate(conditionings)}
    return inside_sampling(patcher, conds, shape, sigmas, seed, run)


def train_on_model(model: Any, start: InfusionConcept, conditionings: Sequence[list],
                   photos: PhotoLatents | PhotoBuckets,
                   settings: TrainingSettings, hooks: TrainingHooks | None = None,
                   run: Mapping[str, Any] | None = None, resume: TrainingState | None = None,
                   gradient_checkpointing_on: bool = True, teacher: Any = None,
                   templates: int | None = None, space: ValueSpace | None = None) -> TrainingState:
    """Train the concept `start` (zeros) on a clone of `model`.

    The vectors train in the model's value space, in units of each layer's output gain (`space`, else
    `training_space(model)`; value_space.py): the returned state holds rho_l, and its run record the scales
    s_l (the space's, or `resume`'s when resuming);
    `trained_concept(start, state, ..., space)` turns them into the concept's vectors.
    `conditionings`: one CONDITIONING per caption, each carrying the word positions: the first
    `templates` (default: all) are the templates drawn per micro-batch, the rest photos' own captions.
    `teacher`: optionally a clone of the same base model whose predictions replace the photos
    as targets (distillation; the planted-concept tests use it). `settings.precision` is one precision, not
    auto (session.py chooses it once a run, before anything is encoded: precision.model_precision).
    `model` is never modified: the residual goes on a clone, the weights are restored bit for
    bit and the block forwards unpatched, on success, cancel or error alike.
    """
    import comfy.model_patcher
    import comfy.sampler_helpers

    if teacher is not None and teacher.model is not model.model:
        raise ValueError("the teacher must be a clone of the model being trained")
    if resume is not None and VALUE_SCALES not in resume.run:
        raise ResumeError(f"the resume state was trained in {resume.run.get('trained_in', 'text space')}, not in "
                          f"{TRAINED_IN} as this version trains: switch resume off to start over")
    model = compat.classic_patcher(model)
    teacher = compat.classic_patcher(teacher) if teacher is not None else None
    adapter = adapter_for(model)
    with torch.inference_mode(False), compat.training_mode():
        space = space or training_space(model, start.variant)
        residual = trainable_residual(model, start, space)
        patcher = model.clone()
        if settings.precision == "fp32" and patcher.model_dtype() != torch.float32:
            patcher.set_model_compute_dtype(torch.float32)  # "fp32" means fp32 even for a half model
        install(patcher, residual)

        def loop(model_wrap: Any, model_options: dict) -> TrainingState:
            device = patcher.load_device
            teacher_options = None
            if teacher is not None:
                teacher_options = comfy.model_patcher.create_model_options_clone(teacher.model_options)
                teacher_options.setdefault("transformer_options", {})
                comfy.sampler_helpers.prepare_model_patcher(teacher, model_wrap.conds, teacher_options)
            residual.to(device)
            denoiser = ComfyDenoiser(model_wrap, model_options, len(conditionings), device, teacher_options)
            vectors = named_vectors(residual)
            scales = resume.run[VALUE_SCALES] if resume is not None else space.scales
            residual.set_scales(scales)
            record = {**(run or {}), VALUE_SCALES: scales}
            with ExitStack() as stack:
                stack.enter_context(autograd_weights(model_wrap.inner_model))
                stack.enter_context(adapter.training_blocks(model_wrap.inner_model.diffusion_model,
                                                            gradient_checkpointing_on, list(vectors.values())))
                return train(vectors, denoiser, photos, templates or len(conditionings), settings, hooks, record,
                             resume)

        # The conditionings are prepared once, for the first bucket's size: what they hold (text, pooled and
        # size vectors, guidance) does not depend on the latent's size.
        shape = (settings.batch_size,) + tuple(PhotoBuckets.of(photos).buckets[0].latents.shape[1:])
        with kernels_with_backward(patcher):  # previews, sampled between these calls, keep the user's kernels
            return in_sampling(patcher, conditionings, shape, settings.seed, loop)
