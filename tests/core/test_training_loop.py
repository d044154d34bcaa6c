"""The training loop on a toy eps-model with one cross-attention per "layer": seeded
reproducibility, bit-exact resume, cancel and non-finite handling, gradients to the vectors only,
and a planted concept recovered in value space."""
import math

import pytest
import torch

from infusion.training.loop import (NonFiniteLossError, PhotoBuckets, PhotoLatents, PhotoOrder, TrainingHooks,
                                    TrainingSettings, train)
from infusion.training.state import ResumeError, load_state, save_state

D_CTX, D_V, LENGTH, CAPTIONS = 16, 4, 6, 3


def sd_sigmas(n=1000):
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, n, dtype=torch.float64) ** 2
    cumprod = torch.cumprod(1 - betas, 0)
    return (((1 - cumprod) / cumprod) ** 0.5).float()


class ToyDenoiser:
    """eps-prediction: eps = sum over layers of W_o softmax(q k^T) W_v (c + u at the word rows) + W_x x."""

    device = torch.device("cpu")
    num_timesteps = 1000

    def __init__(self, vectors, seed=0, planted=None, nan_at=None, oom_at=None):
        g = torch.Generator().manual_seed(seed)
        self.vectors = vectors
        self.layers = list(vectors)
        self.context = torch.randn(CAPTIONS, LENGTH, D_CTX, generator=g)
        self.word_rows = [torch.tensor([1 + c]) for c in range(CAPTIONS)]  # the word moves with the template
        self.w = {name: {"q": torch.randn(4, D_V, generator=g) / 2, "k": torch.randn(D_CTX, D_V, generator=g) / 4,
                         "v": torch.randn(D_CTX, D_V, generator=g) / 4,
                         "o": torch.linalg.qr(torch.randn(D_V, 4, generator=g))[0]}  # well conditioned
                  for name in self.layers}
        self.w_x = torch.randn(4, 4, generator=g) / 4
        self.sigmas = sd_sigmas()
        self.planted = planted
        self.nan_at, self.oom_at, self.calls = nan_at, oom_at, 0

    def sigma(self, t):
        return self.sigmas[t]

    def noised(self, x0, noise, sigma):
        return x0 + noise * sigma.view(-1, 1, 1, 1)

    def prediction_scale(self, sigma):
        return -sigma

    def eps(self, x_in, caption, vectors):
        b, c, h, w = x_in.shape
        pixels = x_in.flatten(2).transpose(1, 2)  # [B, hw, 4]
        out = pixels @ self.w_x
        ctx = self.context[caption]
        for name in self.layers:
            m = self.w[name]
            value = ctx.clone()
            value[self.word_rows[caption]] = value[self.word_rows[caption]] + vectors[name]
            a = torch.softmax((pixels @ m["q"]) @ (ctx @ m["k"]).T / math.sqrt(D_V), dim=-1)
            out = out + a @ (value @ m["v"]) @ m["o"]
        return out.transpose(1, 2).reshape(b, c, h, w)

    def _denoise(self, x_t, sigma, caption, vectors):
        s = sigma.view(-1, 1, 1, 1)
        return x_t - s * self.eps(x_t / (s ** 2 + 1) ** 0.5, caption, vectors)

    def denoise(self, x_t, sigma, caption):
        self.calls += 1
        if self.calls == self.oom_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        out = self._denoise(x_t, sigma, caption, self.vectors)
        return out * float("nan") if self.calls == self.nan_at else out

    def target(self, x0, x_t, sigma, caption):
        return x0 if self.planted is None else self._denoise(x_t, sigma, caption, self.planted)


def fresh_vectors():
    return {f"value.l{i}": torch.nn.Parameter(torch.zeros(D_CTX)) for i in range(2)}


def photos(n=5, seed=1, masked=False):
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(n, 4, 4, 4, generator=g)
    w = torch.rand(n, 1, 4, 4, generator=g) if masked else None
    return PhotoLatents(lat, lat.flip(-1), w, None if w is None else w.flip(-1))


SETTINGS = TrainingSettings(steps=6, learning_rate=0.05, batch_size=2, gradient_accumulation=2, seed=7,
                            precision="fp32")


class Recorder(TrainingHooks):
    def __init__(self, cancel_at_call=None):
        self.saved, self.steps, self.calls, self.cancel_at_call = [], [], 0, cancel_at_call

    def check_cancel(self):
        self.calls += 1
        if self.calls == self.cancel_at_call:
            raise KeyboardInterrupt("cancelled")

    def on_step(self, step, total, losses):
        self.steps.append((step, total, losses[-1]))

    def save(self, state, reason):
        self.saved.append((reason, state))


def run(settings=SETTINGS, hooks=None, resume=None, data=None, **toy):
    vectors = fresh_vectors()
    model = ToyDenoiser(vectors, **toy)
    state = train(vectors, model, data or photos(), CAPTIONS, settings, hooks, run={"photos": "x"}, resume=resume)
    return vectors, state


def same_state(a, b):
    assert a.step == b.step and a.losses == b.losses and a.cursor == b.cursor
    assert torch.equal(a.generator, b.generator) and len(a.order) == len(b.order)
    assert all(torch.equal(x, y) for x, y in zip(a.order, b.order))
    assert all(torch.equal(a.vectors[k], b.vectors[k]) for k in a.vectors)
    assert a.optimizer.keys() == b.optimizer.keys()
    for i in a.optimizer:
        assert all(torch.equal(a.optimizer[i][k], b.optimizer[i][k]) for k in a.optimizer[i])


def test_same_seed_is_bit_identical_and_another_seed_differs():
    _, a = run()
    _, b = run()
    same_state(a, b)
    _, c = run(TrainingSettings(**{**SETTINGS.__dict__, "seed": 8}))
    assert not torch.equal(a.vectors["value.l0"], c.vectors["value.l0"])


def test_stopped_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path):
    """Stopped at 4 of 8 (the schedule spans the 8) and resumed to 8: the uninterrupted run's bits."""
    _, full = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}))
    _, half = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 4, "total_steps": 8}))
    path = save_state(half, str(tmp_path / "run.resume"))
    _, resumed = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}), resume=load_state(path))
    same_state(full, resumed)
    assert [p.name for p in tmp_path.iterdir()] == ["run.resume"]  # no temporary files left


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_resuming_to_another_total_continues_the_run(schedule):
    """A run of 4 resumed to 8 carries on from its state; with the cosine schedule (which spans the total) it is
    another run than an uninterrupted 8, with a constant rate the same one."""
    settings = lambda steps: TrainingSettings(**{**SETTINGS.__dict__, "steps": steps, "schedule": schedule})  # noqa
    _, full = run(settings(8))
    _, four = run(settings(4))
    _, resumed = run(settings(8), resume=four)
    assert resumed.step == 8 and resumed.losses[:4] == four.losses
    if schedule == "constant":
        same_state(full, resumed)
    else:
        assert resumed.losses[:4] != full.losses[:4] or not torch.equal(resumed.vectors["value.l0"],
                                                                          full.vectors["value.l0"])


def test_the_cosine_schedule_falls_from_the_learning_rate_to_zero_over_the_run():
    s = TrainingSettings(learning_rate=0.5, steps=100)
    rates = [s.rate_at(k) for k in range(101)]
    assert rates[0] == 0.5 and rates[50] == pytest.approx(0.25) and rates[100] == 0.0
    assert all(a > b for a, b in zip(rates, rates[1:]))
    assert TrainingSettings(learning_rate=0.5, steps=10, total_steps=100).rate_at(50) == pytest.approx(0.25)
    assert TrainingSettings(learning_rate=0.5, schedule="constant").rate_at(400) == 0.5
    with pytest.raises(ValueError, match="schedule must be one of cosine, constant"):
        TrainingSettings(schedule="linear")


def test_cancel_saves_the_last_completed_step_and_resuming_it_matches(tmp_path):
    hooks = Recorder(cancel_at_call=2 * 3 + 2)  # second micro-batch of step 4
    with pytest.raises(KeyboardInterrupt):
        run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}), hooks=hooks)
    (reason, state), = hooks.saved
    assert reason == "interrupted" and state.step == 3 and len(state.losses) == 3
    _, resumed = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}),
                     resume=load_state(save_state(state, str(tmp_path / "c.resume"))))
    _, full = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}))
    same_state(full, resumed)


def test_checkpoints_every_n_steps_and_a_final_save():
    hooks = Recorder()
    run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 7, "save_every": 3}), hooks=hooks)
    assert [(r, s.step) for r, s in hooks.saved] == [("checkpoint", 3), ("checkpoint", 6), ("final", 7)]
    assert [s for s, _, _ in hooks.steps] == list(range(1, 8)) and all(t == 7 for _, t, _ in hooks.steps)


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_the_last_good_state():
    hooks = Recorder()
    with pytest.raises(NonFiniteLossError, match="step 3"):
        run(hooks=hooks, nan_at=2 * 2 + 1)  # first micro-batch of step 3
    (reason, state), = hooks.saved
    assert reason == "non-finite" and state.step == 2
    assert all(torch.isfinite(v).all() for v in state.vectors.values())
    _, two = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 2, "total_steps": SETTINGS.steps}))
    same_state(two, state)


def test_out_of_memory_keeps_the_last_completed_step_like_cancel(tmp_path):
    hooks = Recorder()
    with pytest.raises(torch.OutOfMemoryError):
        run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}), hooks=hooks, oom_at=2 * 4 + 2)  # in step 5
    (reason, state), = hooks.saved
    assert reason == "out-of-memory" and state.step == 4
    _, resumed = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}),
                     resume=load_state(save_state(state, str(tmp_path / "oom.resume"))))
    _, full = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}))
    same_state(full, resumed)


def test_resume_may_split_the_same_effective_batch_otherwise():
    _, half = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 4, "total_steps": 8}))  # 2 x 2
    _, resumed = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8, "batch_size": 1,
                                        "gradient_accumulation": 4}), resume=half)
    _, full = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8}))
    assert resumed.step == 8 and resumed.losses[:4] == full.losses[:4]  # the first half is the same run
    assert resumed.losses[4:] != full.losses[4:]  # then the draws fall differently: equivalent, not identical
    with pytest.raises(ResumeError, match="effective_batch': 4.*effective_batch': 8"):
        run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 8, "batch_size": 4}), resume=half)


def test_resume_refuses_other_settings_or_data():
    _, half = run(TrainingSettings(**{**SETTINGS.__dict__, "steps": 2}))
    with pytest.raises(ResumeError, match="learning_rate"):
        run(TrainingSettings(**{**SETTINGS.__dict__, "learning_rate": 0.1}), resume=half)
    half.run["photos"] = "other"
    with pytest.raises(ResumeError, match="photos"):
        run(resume=half)


def test_gradients_reach_every_vector_and_nothing_else():
    vectors = fresh_vectors()
    model = ToyDenoiser(vectors)
    frozen = [t for m in model.w.values() for t in m.values()] + [model.w_x, model.context]
    for t in frozen:
        t.requires_grad_(False)

    state = train(vectors, model, photos(), CAPTIONS, TrainingSettings(**{**SETTINGS.__dict__, "steps": 1}))
    assert all(v.abs().sum() > 0 for v in state.vectors.values())
    assert all(t.grad is None for t in frozen)


def test_masked_loss_and_fp16_autocast_run():
    _, masked = run(data=photos(masked=True))
    _, plain = run()
    assert masked.losses != plain.losses
    _, half = run(TrainingSettings(**{**SETTINGS.__dict__, "precision": "fp16"}))
    assert half.scaler is not None and all(math.isfinite(l) for l in half.losses)


def test_photo_order_visits_every_photo_once_per_pass():
    g = torch.Generator().manual_seed(0)
    order = PhotoOrder(5)
    seen = torch.cat([order.take(2, g) for _ in range(5)])
    assert sorted(seen.tolist()) == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert sorted(seen[:5].tolist()) == [0, 1, 2, 3, 4]


def test_planted_concept_is_recovered_in_value_space():
    g = torch.Generator().manual_seed(3)
    planted = {f"value.l{i}": torch.randn(D_CTX, generator=g) for i in range(2)}
    settings = TrainingSettings(steps=60, learning_rate=0.1, batch_size=4, gradient_accumulation=1, seed=0,
                                precision="fp32", flip=False)
    vectors = fresh_vectors()
    model = ToyDenoiser(vectors, planted=planted)
    state = train(vectors, model, photos(), CAPTIONS, settings)
    assert state.losses[-1] < 0.1 * state.losses[0]
    for name, u in planted.items():
        wv = model.w[name]["v"]
        cos = torch.nn.functional.cosine_similarity(state.vectors[name] @ wv, u @ wv, dim=0)
        assert cos > 0.95, (name, float(cos))


def test_by_caption_calls_once_per_caption_and_keeps_batch_order():
    from infusion.training.loop import by_caption
    calls = []

    def call(x, caption):
        calls.append((caption, x.shape[0]))
        return x * 10 + caption

    x = torch.arange(5.0)
    out = by_caption(call, torch.tensor([2, 0, 2, 1, 0]), x)
    assert torch.equal(out, torch.tensor([2.0, 10.0, 22.0, 31.0, 40.0]))
    assert calls == [(0, 2), (1, 1), (2, 2)]
    assert torch.equal(by_caption(call, 1, x), x * 10 + 1)


def test_photos_own_captions_replace_the_template_and_none_changes_nothing():
    data = photos()
    _, plain = run(data=data)
    data.captions = torch.full((5,), -1)
    _, no_own = run(data=data)
    same_state(plain, no_own)  # the same draws, the same calls: bit-identical
    data.captions = torch.tensor([2, -1, 2, -1, -1])
    _, own = run(data=data)
    assert own.losses != plain.losses


def bucketed(masked=False):
    """Five photos in two buckets: three 4x4 latents and two 2x8 (a landscape), photos 1, 3, 4 and 0, 2."""
    square, wide = photos(3, seed=1, masked=masked), photos(2, seed=2, masked=masked)
    wide = PhotoLatents(*(None if t is None else t.reshape(t.shape[0], t.shape[1], 2, 8)
                          for t in (wide.latents, wide.flipped, wide.weights, wide.flipped_weights)))
    wide.flipped = wide.latents.flip(-1)
    return PhotoBuckets([square, wide], [[1, 3, 4], [0, 2]])


class ShapeRecorder(ToyDenoiser):
    def denoise(self, x_t, sigma, caption):
        self.shapes = getattr(self, "shapes", []) + [tuple(x_t.shape)]
        return super().denoise(x_t, sigma, caption)


def test_a_micro_batch_never_mixes_buckets_and_every_photo_is_drawn_as_often():
    vectors = fresh_vectors()
    model = ShapeRecorder(vectors)
    settings = TrainingSettings(**{**SETTINGS.__dict__, "steps": 100})
    train(vectors, model, bucketed(), CAPTIONS, settings)
    assert set(model.shapes) == {(2, 4, 4, 4), (2, 4, 2, 8)}  # whole batches, each of one size
    wide = sum(s == (2, 4, 2, 8) for s in model.shapes) / len(model.shapes)
    assert 0.3 < wide < 0.5  # two photos of five: drawn with their share (seeded, so this is exact)


def test_bucketed_runs_are_seeded_and_resume_bit_for_bit(tmp_path):
    settings = lambda steps, total=0: TrainingSettings(**{**SETTINGS.__dict__, "steps": steps,  # noqa: E731
                                                          "total_steps": total})
    _, full = run(settings(8), data=bucketed(masked=True))
    _, again = run(settings(8), data=bucketed(masked=True))
    same_state(full, again)
    assert len(full.order) == 2
    _, half = run(settings(4, 8), data=bucketed(masked=True))
    _, resumed = run(settings(8), data=bucketed(masked=True),
                     resume=load_state(save_state(half, str(tmp_path / "b.resume"))))
    same_state(full, resumed)
    with pytest.raises(ValueError, match="2 photo buckets, these photos 1"):
        run(settings(8), resume=half)


def test_one_bucket_draws_exactly_as_plain_photos():
    data = photos()
    _, plain = run(data=data)
    _, one = run(data=PhotoBuckets.of(data))
    same_state(plain, one)
