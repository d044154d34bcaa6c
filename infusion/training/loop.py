"""The training loop: AdamW on the residual vectors only, every random draw from one seeded
generator, resumable bit for bit, cancel-safe.

The model is reached through a small `Denoiser` interface (ComfyUI's implementation lives in
comfy_model.py), so the loop itself is plain PyTorch.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Protocol

import torch

from .objective import diffusion_loss
from .precision import AUTO, CHOICES, PRECISIONS
from .state import TrainingState, check_resumable

SCHEDULES = ("cosine", "constant")


class NonFiniteLossError(RuntimeError):
    """The loss or its gradient became NaN or infinite; the last good state was kept."""


def is_out_of_memory(error: BaseException) -> bool:
    """CUDA's and torch's out-of-memory error (torch.OutOfMemoryError since 2.5), or MPS's RuntimeError."""
    oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    return isinstance(error, oom) or (isinstance(error, RuntimeError) and "out of memory" in str(error))


@dataclass(frozen=True)
class TrainingSettings:
    """The node's defaults: AdamW (weight decay 0.01) on vectors in units of each layer's values at the word
    (value_space.py), learning rate LR decaying along a cosine to 0 over the run, batch 4 without accumulation,
    500 steps, autocast in the model's own precision (precision.py), random horizontal flips. (The authors': a
    constant 0.01 on absolute value-space vectors, batch 4 x accumulation 4; the toy world learns at these
    defaults and not at theirs: docs.)"""

    steps: int = 500
    learning_rate: float = 0.1
    batch_size: int = 4
    gradient_accumulation: int = 1
    seed: int = 0
    flip: bool = True
    weight_decay: float = 0.01
    precision: str = AUTO
    save_every: int = 0
    schedule: str = "cosine"
    total_steps: int = 0  # the whole run's steps, which the schedule spans, when this call trains a part (0: steps)

    def __post_init__(self) -> None:
        if self.precision not in CHOICES:
            raise ValueError(f"precision must be one of {', '.join(CHOICES)}, not '{self.precision}'")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not '{self.schedule}'")
        for name in ("steps", "batch_size", "gradient_accumulation"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, not {getattr(self, name)}")
        if not self.learning_rate > 0 or self.weight_decay < 0 or self.save_every < 0:
            raise ValueError("learning_rate must be > 0, weight_decay and save_every >= 0")

    @property
    def effective_batch(self) -> int:
        return self.batch_size * self.gradient_accumulation

    def rate_at(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based). Cosine: from the learning rate down to 0 over
        the run's total steps, so every run ends at a settled concept whatever its length (at a constant rate
        the vectors keep wandering with the gradient noise, and more steps can draw the concept less often)."""
        if self.schedule == "constant":
            return self.learning_rate
        total = self.total_steps or self.steps
        return self.learning_rate * 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    def trajectory(self) -> dict[str, Any]:
        """The settings a resumed run must keep. Steps and save_every may change, and so may the split
        of the effective batch (4 x 4 -> 2 x 8, the answer to running out of memory): the same
        photos, vectors and optimizer carry on, but the random draws then fall differently than in
        an uninterrupted run, so such a resume is equivalent rather than bit-identical."""
        out = asdict(self)
        del out["steps"], out["save_every"], out["batch_size"], out["gradient_accumulation"], out["total_steps"]
        return {**out, "effective_batch": self.effective_batch}


class Denoiser(Protocol):
    """What the loop needs from a diffusion model (see comfy_model.ComfyDenoiser)."""

    device: torch.device
    num_timesteps: int

    def sigma(self, timesteps: torch.Tensor) -> torch.Tensor: ...

    def noised(self, x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor: ...

    def denoise(self, x_t: torch.Tensor, sigma: torch.Tensor, caption: int) -> torch.Tensor: ...

    def prediction_scale(self, sigma: torch.Tensor) -> torch.Tensor: ...

    def target(self, x0: torch.Tensor, x_t: torch.Tensor, sigma: torch.Tensor, caption: int) -> torch.Tensor: ...


@dataclass
class PhotoLatents:
    """The photos, encoded once: clean latents in the model's space [N, C, h, w] (or [N, C, 1, h, w] from a
    video VAE), the same photos mirrored (encoded from mirrored pixels), and mask loss weights [N, 1, h, w]
    (shaped alike) if masked."""

    latents: torch.Tensor
    flipped: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    flipped_weights: torch.Tensor | None = None
    captions: torch.Tensor | None = None  # [N] each photo's own caption (a conditioning index), -1 for none
    offsets: torch.Tensor | None = None   # [N] added to each photo's conditioning index: its geometry's (SDXL)

    def to(self, device: torch.device) -> "PhotoLatents":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PhotoLatents(move(self.latents), move(self.flipped), move(self.weights), move(self.flipped_weights),
                            self.captions, self.offsets)

    def conditionings_of(self, index: torch.Tensor, template: int) -> int | torch.Tensor:
        """The conditioning of each selected photo: its own caption, else the drawn template, moved to its
        geometry's copy of the conditionings when the family has one (one int when the whole batch shares it)."""
        chosen: int | torch.Tensor = template
        if self.captions is not None:
            own = self.captions[index]
            chosen = template if bool((own < 0).all()) else torch.where(own >= 0, own, template)
        if self.offsets is None:
            return chosen
        moved = chosen + self.offsets[index]
        return int(moved[0]) if bool((moved == moved[0]).all()) else moved

    def select(self, index: torch.Tensor, mirror: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        x0, w = self.latents[index], None if self.weights is None else self.weights[index]
        if mirror is not None:
            m = mirror.to(x0.device).view((-1,) + (1,) * (x0.ndim - 1))
            x0 = torch.where(m, self.flipped[index], x0)
            if w is not None:
                w = torch.where(m, self.flipped_weights[index], w)
        return x0, w


@dataclass
class PhotoBuckets:
    """The photos grouped by training size (aspect-ratio buckets, buckets.py): one PhotoLatents per size, and
    which photos (indices into the photos as given) each holds. A micro-batch is drawn from one bucket."""

    buckets: list[PhotoLatents]
    members: list[list[int]]

    @classmethod
    def of(cls, photos: "PhotoLatents | PhotoBuckets") -> "PhotoBuckets":
        """One bucket, when all photos have one size."""
        if isinstance(photos, PhotoBuckets):
            return photos
        return cls([photos], [list(range(photos.latents.shape[0]))])

    @property
    def counts(self) -> list[int]:
        return [len(m) for m in self.members]

    def set_captions(self, captions: torch.Tensor) -> None:
        """Each photo's own caption ([photos], as PhotoLatents.captions), shared out to the buckets."""
        for bucket, members in zip(self.buckets, self.members):
            bucket.captions = captions[members]

    def set_offsets(self, offsets: torch.Tensor) -> None:
        """Each photo's conditioning offset ([photos], as PhotoLatents.offsets), shared out to the buckets."""
        for bucket, members in zip(self.buckets, self.members):
            bucket.offsets = offsets[members]

    def to(self, device: torch.device) -> "PhotoBuckets":
        return PhotoBuckets([b.to(device) for b in self.buckets], self.members)


class PhotoOrder:
    """Passes over the photos, each pass in a fresh random order; a batch may span two passes."""

    def __init__(self, count: int, order: torch.Tensor | None = None, cursor: int = 0):
        self.count = count
        self.order = torch.empty(0, dtype=torch.int64) if order is None else order.to(torch.int64)
        self.cursor = cursor

    def take(self, k: int, generator: torch.Generator) -> torch.Tensor:
        parts = []
        while k > 0:
            if self.cursor >= len(self.order):
                self.order, self.cursor = torch.randperm(self.count, generator=generator), 0
            n = min(k, len(self.order) - self.cursor)
            parts.append(self.order[self.cursor:self.cursor + n])
            self.cursor, k = self.cursor + n, k - n
        return torch.cat(parts)


class TrainingHooks:
    """Callbacks from the loop. `check_cancel` raises to stop (before every micro-batch);
    `save` receives the state at a step boundary with reason "checkpoint", "final",
    "interrupted", "out-of-memory" or "non-finite"."""

    def check_cancel(self) -> None:
        pass

    def on_step(self, step: int, total: int, losses: list[float]) -> None:
        pass

    def save(self, state: TrainingState, reason: str) -> None:
        pass


def by_caption(call: Any, captions: int | torch.Tensor, *batch: torch.Tensor) -> torch.Tensor:
    """`call(*batch, caption)` for a batch whose items may each have their own caption: one call per
    caption (photos sharing one stay batched), results back in batch order."""
    if isinstance(captions, int):
        return call(*batch, captions)
    order = torch.argsort(captions, stable=True)
    values, counts = torch.unique_consecutive(captions[order], return_counts=True)
    parts, start = [], 0
    for value, count in zip(values.tolist(), counts.tolist()):
        rows = order[start:start + count].to(batch[0].device)
        parts.append(call(*(t[rows] for t in batch), value))
        start += count
    return torch.cat(parts)[torch.argsort(order).to(batch[0].device)]


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    return not tensors or bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all())


def _restore(resume: TrainingState, vectors: Mapping[str, torch.nn.Parameter], optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, generator: torch.Generator) -> None:
    """The vectors, AdamW's moments, the loss scale and the random generator as the resume state has them."""
    if list(resume.vectors) != list(vectors):
        raise ValueError("the resume state holds other vectors than this model's layers")
    with torch.no_grad():
        for name, p in vectors.items():
            p.copy_(resume.vectors[name])
    # Copies: a state loaded inside ComfyUI's executor holds inference tensors, which AdamW
    # could not update in place.
    moments = {i: {k: t.clone() for k, t in s.items()} for i, s in resume.optimizer.items()}
    optimizer.load_state_dict({"state": moments, "param_groups": optimizer.state_dict()["param_groups"]})
    if resume.scaler is not None:
        scaler.load_state_dict(resume.scaler)
    generator.set_state(resume.generator)


def _micro_batch_loss(model: Denoiser, photos: PhotoBuckets, orders: list[PhotoOrder], generator: torch.Generator,
                      captions: int, batch: int, flip: bool, autocast: Any) -> torch.Tensor:
    """One model call's loss. Its random draws, in this order: the bucket (only when there are several; each
    with the chance of its share of the photos, so every photo is drawn as often), the photos (a bucket with
    fewer photos than the batch repeats them: the batch stays whole), one caption template, the mirror flags,
    a timestep per photo, the noise (a resumed run draws them as the uninterrupted run does)."""
    b = 0
    if len(orders) > 1:
        b = int(torch.multinomial(torch.tensor(photos.counts, dtype=torch.float64), 1, generator=generator))
    latents = photos.buckets[b]
    index = orders[b].take(batch, generator)
    caption = int(torch.randint(captions, (1,), generator=generator))
    mirror = torch.rand(batch, generator=generator) < 0.5 if flip else None
    t = torch.randint(model.num_timesteps, (batch,), generator=generator)
    noise = torch.randn((batch,) + tuple(latents.latents.shape[1:]), generator=generator)
    x0, weights = latents.select(index, mirror)
    sigma = model.sigma(t.to(model.device))
    x_t = model.noised(x0, noise.to(model.device), sigma)
    conds = latents.conditionings_of(index, caption)
    with autocast:
        with torch.no_grad():
            target = by_caption(model.target, conds, x0, x_t, sigma)
        denoised = by_caption(model.denoise, conds, x_t, sigma)
    return diffusion_loss(denoised, target, model.prediction_scale(sigma), weights)


def train(vectors: Mapping[str, torch.nn.Parameter], model: Denoiser, photos: PhotoLatents | PhotoBuckets,
          captions: int, settings: TrainingSettings, hooks: TrainingHooks | None = None, run: Mapping[str, Any] | None = None,
          resume: TrainingState | None = None) -> TrainingState:
    """Train `vectors` (the residual's parameters, updated in place) until `settings.steps`.

    Per micro-batch, in this order from one generator seeded with `settings.seed`: the photos
    (passes in random order), one caption template (`captions`: how many there are; photos with
    their own caption use it instead), the mirror flags, t ~ U{0..T-1} per photo, and the noise. `run` describes the data (photos hash, word, templates, ...); a `resume`
    state must match it and the settings' trajectory.
    """
    if settings.precision == AUTO:
        raise ValueError("precision 'auto' is chosen for a model (precision.model_precision) before the loop")
    hooks = hooks or TrainingHooks()
    photos = PhotoBuckets.of(photos)
    if settings.flip and any(b.flipped is None for b in photos.buckets):
        raise ValueError("flip is on but the photos were encoded without their mirror images")
    run = {**(run or {}), "settings": settings.trajectory()}
    names, params = list(vectors), list(vectors.values())
    device = model.device
    generator = torch.Generator().manual_seed(settings.seed)
    orders = [PhotoOrder(n) for n in photos.counts]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=settings.precision == "fp16")
    step, losses = 0, []
    if resume is not None:
        check_resumable(resume, run)
        _restore(resume, vectors, optimizer, scaler, generator)
        if len(resume.order) != len(orders):
            raise ValueError(f"the resume state has {len(resume.order)} photo buckets, these photos {len(orders)}")
        orders = [PhotoOrder(n, o, c) for n, o, c in zip(photos.counts, resume.order, resume.cursor)]
        step, losses = resume.step, list(resume.losses)

    def draws() -> tuple[torch.Tensor, list[torch.Tensor], list[int]]:
        return generator.get_state(), [o.order.clone() for o in orders], [o.cursor for o in orders]

    def snapshot(at: tuple[torch.Tensor, list[torch.Tensor], list[int]]) -> TrainingState:
        opt = {i: {k: v.detach().to("cpu", copy=True) for k, v in s.items()}
               for i, s in optimizer.state_dict()["state"].items()}
        vecs = {n: p.detach().to("cpu", torch.float32, copy=True) for n, p in zip(names, params)}
        return TrainingState(step=step, vectors=vecs, optimizer=opt, generator=at[0], order=at[1], cursor=at[2],
                             losses=list(losses), run=dict(run),
                             scaler=scaler.state_dict() if scaler.is_enabled() else None)

    autocast = (torch.autocast(device.type, dtype=PRECISIONS[settings.precision])
                if PRECISIONS[settings.precision] is not None else nullcontext())
    latents = photos.to(device)
    accumulation = settings.gradient_accumulation
    last_good = draws()
    try:
        while step < settings.steps:
            total = torch.zeros((), device=device)
            for _ in range(accumulation):
                hooks.check_cancel()
                loss = _micro_batch_loss(model, latents, orders, generator, captions, settings.batch_size,
                                         settings.flip, autocast)
                scaler.scale(loss / accumulation).backward()
                total += loss.detach()
            mean = total.item() / accumulation
            if not math.isfinite(mean):
                raise NonFiniteLossError(f"the loss became {mean} at step {step + 1}")
            # (with fp16 the gradient scaler skips such steps itself and lowers its scale)
            if not scaler.is_enabled() and not _all_finite([p.grad for p in params if p.grad is not None]):
                raise NonFiniteLossError(f"the gradient became non-finite at step {step + 1}")
            for group in optimizer.param_groups:
                group["lr"] = settings.rate_at(step)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            losses.append(mean)
            last_good = draws()
            hooks.on_step(step, settings.steps, losses)
            if settings.save_every and step % settings.save_every == 0 and step < settings.steps:
                hooks.save(snapshot(last_good), "checkpoint")
    except NonFiniteLossError:
        optimizer.zero_grad(set_to_none=True)
        if step > 0:
            hooks.save(snapshot(last_good), "non-finite")
        raise
    except BaseException as e:
        # Cancel, out of memory, any error: the last completed step is kept, as on a pause.
        optimizer.zero_grad(set_to_none=True)
        if step > 0:
            hooks.save(snapshot(last_good), "out-of-memory" if is_out_of_memory(e) else "interrupted")
        raise
    final = snapshot(last_good)
    hooks.save(final, "final")
    return final
