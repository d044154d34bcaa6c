"""The training objective: squared error in the model's own prediction space.

ComfyUI models return the denoised latent D = a(sigma) x_t + b(sigma) F, affine in the network
output F (eps for eps models, v for v-prediction). With x0 the clean latent, F's target is
(x0 - a x_t) / b, so F - target = (D - x0) / b: the eps (or v) error is the x0 error divided
by b(sigma). At t ~ U{0..999} this is the authors' loss, for either parameterisation.
"""
from __future__ import annotations

import torch


def prediction_error(denoised: torch.Tensor, target: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """F - F_target per element, from the denoised prediction, its target and b(sigma) per sample."""
    scale = scale.to(torch.float32).reshape((-1,) + (1,) * (denoised.ndim - 1))
    return (denoised.float() - target.float()) / scale


def diffusion_loss(denoised: torch.Tensor, target: torch.Tensor, scale: torch.Tensor,
                   weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared prediction error. A soft foreground mask multiplies prediction and target
    alike, as in the authors' code, so the error is weighted by the mask squared and the
    background contributes nothing."""
    error = prediction_error(denoised, target, scale)
    if weights is not None:
        error = error * weights.to(error)
    return error.square().mean()
