"""Latent Fisher divergence (concept-agnostic overfitting) between two noise predictors.

  LFD = E_p E_t E_{x0, eps} [ w(sigma_t) * |eps_custom(x_t, sigma_t, p) - eps_base(x_t, sigma_t, p)|^2 / d ]

with x_t = x0 + sigma_t * eps (the k-diffusion / ComfyUI parameterisation, where the
score is -eps / sigma; flow-matching models, ComfyUI's CONST: x_t = (1 - sigma_t) x0 + sigma_t eps,
still compared in noise space), p over prompts that do not name the concept, x0 over reference
latents and d the number of latent elements (so the figure does not scale with the
resolution). Weightings:

- ``"epsilon"``: w = 1, the plain epsilon-space divergence;
- ``"fisher"``: w = 1 / max(sigma, sigma_floor)^2, the score-space (true Fisher)
  divergence. It explodes as sigma -> 0, so sigma is clamped from below at
  ``sigma_floor`` (default 0.1, where the weight is 100: on the SD1.x/SD2.x/SDXL
  schedule only the lowest 11 of 1000 timesteps are clamped).

Common random numbers: every random draw (which reference latent, which timestep,
which noise) is made once, up front, from one seeded CPU ``torch.Generator``, and both
models are evaluated on exactly the same x_t. Identical predictors therefore give
exactly 0, and the difference of two close models is measured with little noise.

Timesteps are stratified: the range is cut into ``n_timesteps`` equal strata and each
(latent, noise) draw j gets one uniform timestep in every stratum. The per-draw
averages Y_j over prompts and strata are i.i.d. up to the balanced choice of
latents (each reference latent is used equally often), so the standard error is
std(Y) / sqrt(n) (slightly conservative for that balanced choice).

All base evaluations come before all customized ones (``evaluate`` then ``compare``):
a host that swaps weights between the two models, as ComfyUI does when a LoRA is
patched into weights shared with the base model, swaps once instead of per batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from einops import rearrange


Weighting = Literal["epsilon", "fisher"]
# eps(x_t, sigma, prompt_index) -> predicted noise, same shape as x_t; x_t is (b, ...)
# float32 on CPU, sigma is (b,) float32 on CPU.
EpsFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]

DEFAULT_SIGMA_FLOOR = 0.1
_WEIGHTINGS = ("epsilon", "fisher")


@dataclass(frozen=True)
class LFDPlan:
    """Every random draw of one LFD estimate, shared by both models."""

    latents: torch.Tensor  # (N, ...) clean reference latents, model space, float32 CPU
    n_prompts: int
    strata: tuple[tuple[int, int], ...]  # per timestep stratum: [first, last] index
    latent_index: torch.Tensor  # (n,) which reference latent each draw uses
    t_index: torch.Tensor  # (K, n) timestep index of draw j in stratum k
    sigma: torch.Tensor  # (K, n) float32, sigma_table[t_index]
    noise: torch.Tensor  # (P, K, n, ...) float32
    batch_size: int
    seed: int
    flow: bool = False  # x_t = (1 - sigma) x0 + sigma eps (flow matching) instead of x0 + sigma eps

    @property
    def n_samples(self) -> int:
        return self.latent_index.shape[0]

    @property
    def n_batches(self) -> int:
        """Model calls per model: one per (prompt, timestep, chunk of draws)."""
        return self.n_prompts * len(self.strata) * math.ceil(self.n_samples / self.batch_size)

    def x_t(self, prompt: int, stratum: int, rows: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Noised latents and their sigmas for draws ``rows`` of one (prompt, stratum)."""
        sigma = self.sigma[stratum, rows]
        x0 = self.latents[self.latent_index[rows]]
        s = sigma.view((-1,) + (1,) * (x0.ndim - 1))
        signal = (1 - s) * x0 if self.flow else x0
        return signal + s * self.noise[prompt, stratum, rows], sigma


@dataclass(frozen=True)
class TimestepRow:
    """The divergence restricted to one timestep stratum."""

    t_first: int
    t_last: int
    sigma_min: float
    sigma_max: float
    value: float
    stderr: float


@dataclass(frozen=True)
class LFDResult:
    value: float
    stderr: float
    weighting: Weighting
    sigma_floor: float
    n_prompts: int
    n_samples: int  # (latent, noise) draws per (prompt, timestep)
    latent_shape: tuple[int, ...]
    seed: int
    per_timestep: tuple[TimestepRow, ...]

    def report(self) -> str:
        if self.weighting == "epsilon":
            weight = "epsilon space, w = 1"
        else:
            weight = f"Fisher (score space), w = 1/max(sigma, {self.sigma_floor:g})^2"
        dims = "x".join(str(s) for s in self.latent_shape)
        n_rows = len(self.per_timestep)
        lines = [
            "Infusion Latent Fisher divergence (concept-agnostic overfitting; 0 = unchanged)",
            f"LFD = {self.value:.6g} +/- {self.stderr:.3g} (standard error)",
            f"weighting: {weight}",
            f"per latent element: |eps_custom - eps_base|^2 / d, d = {dims} = {math.prod(self.latent_shape)}",
            f"{self.n_prompts} prompts x {n_rows} timesteps x {self.n_samples} latent/noise draws "
            f"= {self.n_prompts * n_rows * self.n_samples} samples, seed {self.seed}",
            f"{'timesteps':>11}  {'sigma':>15}  {'LFD':>11}  {'s.e.':>9}",
        ]
        for r in self.per_timestep:
            lines.append(f"{r.t_first:>5}-{r.t_last:<5}  {r.sigma_min:>7.4g}-{r.sigma_max:<7.4g}  "
                         f"{r.value:>11.4g}  {r.stderr:>9.3g}")
        return "\n".join(lines)


def _check_inputs(latents: torch.Tensor, sigma_table: torch.Tensor, n_prompts: int,
                  n_samples: int, batch_size: int | None) -> None:
    if latents.ndim < 2 or latents.shape[0] < 1:
        raise ValueError(f"latents: expected a (N, ...) batch, got shape {tuple(latents.shape)}")
    if not torch.isfinite(latents).all():
        raise ValueError("latents contain NaN or infinity")
    if sigma_table.ndim != 1 or not (torch.isfinite(sigma_table).all() and (sigma_table > 0).all()):
        raise ValueError("sigma_table must be a 1-D table of positive, finite sigmas")
    if n_prompts < 1:
        raise ValueError("need at least one prompt")
    if n_samples < 2:
        raise ValueError(f"need at least 2 latent/noise draws for a standard error, got {n_samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")


def _strata(t_range: tuple[int, int], n_timesteps: int, table_size: int) -> tuple[tuple[int, int], ...]:
    first, last = t_range
    if not 0 <= first <= last < table_size:
        raise ValueError(f"t_range {t_range} is outside the schedule's timesteps 0..{table_size - 1}")
    span = last - first + 1
    if not 1 <= n_timesteps <= span:
        raise ValueError(f"n_timesteps must be between 1 and {span}, got {n_timesteps}")
    edges = [first + (k * span) // n_timesteps for k in range(n_timesteps + 1)]
    return tuple((edges[k], edges[k + 1] - 1) for k in range(n_timesteps))


def _balanced_latent_choice(n_latents: int, n_samples: int, g: torch.Generator) -> torch.Tensor:
    """Random order in which every reference latent is used equally often (+-1)."""
    rounds = math.ceil(n_samples / n_latents)
    return torch.cat([torch.randperm(n_latents, generator=g) for _ in range(rounds)])[:n_samples]


def make_plan(latents: torch.Tensor, sigma_table: torch.Tensor, n_prompts: int, *,
              n_timesteps: int = 10, n_samples: int = 4, seed: int = 0,
              t_range: tuple[int, int] | None = None, batch_size: int | None = None, flow: bool = False) -> LFDPlan:
    """Draw every random number of an LFD estimate from ``torch.Generator().manual_seed(seed)``.

    ``sigma_table[t]`` is the model's sigma at discrete timestep t (ComfyUI:
    ``model_sampling.sigmas``); ``t_range`` is an inclusive index range (default: all).
    ``batch_size`` caps the draws per model call (default: all n_samples in one call).
    """
    latents = latents.detach().to("cpu", torch.float32)
    sigma_table = sigma_table.detach().to("cpu", torch.float64)
    _check_inputs(latents, sigma_table, n_prompts, n_samples, batch_size)
    strata = _strata(t_range or (0, sigma_table.shape[0] - 1), n_timesteps, sigma_table.shape[0])
    g = torch.Generator().manual_seed(seed)
    latent_index = _balanced_latent_choice(latents.shape[0], n_samples, g)
    first = torch.tensor([a for a, _ in strata], dtype=torch.float64)[:, None]
    width = torch.tensor([b - a + 1 for a, b in strata], dtype=torch.float64)[:, None]
    # float64 uniforms in [0, 1) keep floor(u * width) strictly below width.
    u = torch.rand((len(strata), n_samples), generator=g, dtype=torch.float64)
    t_index = (first + torch.floor(u * width)).long()
    noise = torch.randn((n_prompts, len(strata), n_samples) + tuple(latents.shape[1:]), generator=g)
    return LFDPlan(latents=latents, n_prompts=n_prompts, strata=strata, latent_index=latent_index,
                   t_index=t_index, sigma=sigma_table[t_index].float(), noise=noise,
                   batch_size=min(batch_size or n_samples, n_samples), seed=seed, flow=flow)


def evaluate(plan: LFDPlan, eps: EpsFn, on_batch: Callable[[], None] | None = None) -> list[torch.Tensor]:
    """One model's predictions on every draw: entry [p * K + k] is (n, ...) float32 CPU.

    ``on_batch`` runs after every model call (progress, cancellation).
    """
    table = []
    for p in range(plan.n_prompts):
        for k in range(len(plan.strata)):
            chunks = []
            for start in range(0, plan.n_samples, plan.batch_size):
                x, sigma = plan.x_t(p, k, slice(start, start + plan.batch_size))
                out = eps(x, sigma, p).detach().to("cpu", torch.float32)
                if out.shape != x.shape:
                    raise ValueError(f"eps returned shape {tuple(out.shape)} for input {tuple(x.shape)}")
                if not torch.isfinite(out).all():
                    raise ValueError(f"eps returned NaN or infinity (prompt {p}, timesteps {plan.strata[k]})")
                chunks.append(out)
                if on_batch is not None:
                    on_batch()
            table.append(torch.cat(chunks))
    return table


def check_weighting(weighting: str, sigma_floor: float) -> None:
    """Raise on an unknown weighting or a non-positive clamp (before any model runs)."""
    if weighting not in _WEIGHTINGS:
        raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
    if not sigma_floor > 0:
        raise ValueError(f"sigma_floor must be positive, got {sigma_floor}")


def _weights(sigma: torch.Tensor, weighting: Weighting, sigma_floor: float) -> torch.Tensor:
    if weighting == "epsilon":
        return torch.ones_like(sigma, dtype=torch.float64)
    return sigma.double().clamp_min(sigma_floor).pow(-2)


def _stderr(y: torch.Tensor) -> float:
    """Standard error of the mean of i.i.d. draws y (n >= 2)."""
    return float(y.std(correction=1) / math.sqrt(y.shape[0]))


def compare(plan: LFDPlan, base: list[torch.Tensor], custom: list[torch.Tensor],
            weighting: Weighting = "epsilon", sigma_floor: float = DEFAULT_SIGMA_FLOOR) -> LFDResult:
    """The divergence between two ``evaluate`` tables of the same plan."""
    check_weighting(weighting, sigma_floor)
    n_strata = len(plan.strata)
    if len(base) != len(custom) or len(base) != plan.n_prompts * n_strata:
        raise ValueError("base and custom tables must both come from evaluate() on this plan")
    # sq[p, k, j]: mean squared eps difference of draw j, per latent element (tables come prompt-major).
    sq = torch.stack([(c.double() - b.double()).square().flatten(1).mean(1) for b, c in zip(base, custom)])
    sq = rearrange(sq, "(prompt stratum) draw -> prompt stratum draw", prompt=plan.n_prompts)
    per_stratum = (_weights(plan.sigma, weighting, sigma_floor) * sq).mean(0)  # (K, n): mean over prompts
    per_draw = per_stratum.mean(0)  # Y_j
    rows = tuple(
        TimestepRow(t_first=a, t_last=b, sigma_min=float(plan.sigma[k].min()),
                    sigma_max=float(plan.sigma[k].max()), value=float(per_stratum[k].mean()),
                    stderr=_stderr(per_stratum[k]))
        for k, (a, b) in enumerate(plan.strata))
    return LFDResult(value=float(per_draw.mean()), stderr=_stderr(per_draw), weighting=weighting,
                     sigma_floor=sigma_floor, n_prompts=plan.n_prompts, n_samples=plan.n_samples,
                     latent_shape=tuple(plan.latents.shape[1:]), seed=plan.seed, per_timestep=rows)


def latent_fisher_divergence(eps_base: EpsFn, eps_custom: EpsFn, latents: torch.Tensor,
                             sigma_table: torch.Tensor, n_prompts: int, *, n_timesteps: int = 10,
                             n_samples: int = 4, seed: int = 0, weighting: Weighting = "epsilon",
                             sigma_floor: float = DEFAULT_SIGMA_FLOOR,
                             t_range: tuple[int, int] | None = None, batch_size: int | None = None,
                             on_batch: Callable[[], None] | None = None) -> LFDResult:
    """LFD between two noise predictors on the same draws: ``make_plan``, then base, then custom."""
    check_weighting(weighting, sigma_floor)
    plan = make_plan(latents, sigma_table, n_prompts, n_timesteps=n_timesteps, n_samples=n_samples,
                     seed=seed, t_range=t_range, batch_size=batch_size)
    base = evaluate(plan, eps_base, on_batch)
    custom = evaluate(plan, eps_custom, on_batch)
    return compare(plan, base, custom, weighting, sigma_floor)
