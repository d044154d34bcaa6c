"""Latent Fisher divergence core: common random numbers, weightings, strata, standard error."""
import math

import pytest
import torch

from infusion.metrics import (DEFAULT_SIGMA_FLOOR, compare, evaluate, latent_fisher_divergence,
                              make_plan)

LATENT = (4, 8, 8)
D = math.prod(LATENT)


def sd_sigmas() -> torch.Tensor:
    """SD1.x/SD2.x/SDXL's discrete schedule (scaled-linear betas), as ComfyUI builds it."""
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    alphas = torch.cumprod(1 - betas, 0)
    return ((1 - alphas) / alphas).sqrt().float()


def latents(n: int = 3, seed: int = 0) -> torch.Tensor:
    return torch.randn((n,) + LATENT, generator=torch.Generator().manual_seed(seed))


def zero_eps(x, sigma, p):
    return torch.zeros_like(x)


def lfd(eps_base, eps_custom, **kw):
    args = {"latents": latents(), "sigma_table": sd_sigmas(), "n_prompts": 2, "n_timesteps": 5,
            "n_samples": 6, "seed": 0, **kw}
    return latent_fisher_divergence(eps_base, eps_custom, **args)


class Recorder:
    """A toy noise predictor that logs what it was called with."""

    def __init__(self, name, log, fn=zero_eps):
        self.name, self.log, self.fn = name, log, fn

    def __call__(self, x, sigma, p):
        self.log.append((self.name, x.clone(), sigma.clone(), p))
        return self.fn(x, sigma, p)


# ------------------------------------------------------------------ exactness

def test_identical_predictors_give_exactly_zero():
    def eps(x, sigma, p):
        return torch.tanh(x * (p + 1)) / sigma.view(-1, 1, 1, 1)

    r = lfd(eps, eps, weighting="fisher")
    assert r.value == 0.0 and r.stderr == 0.0
    assert all(row.value == 0.0 and row.stderr == 0.0 for row in r.per_timestep)


def test_both_models_see_the_same_inputs_base_first():
    log = []
    lfd(Recorder("base", log), Recorder("custom", log), batch_size=4)
    base = [e for e in log if e[0] == "base"]
    custom = [e for e in log if e[0] == "custom"]
    assert [e[0] for e in log] == ["base"] * len(base) + ["custom"] * len(custom)  # one swap only
    assert len(base) == len(custom) == 2 * 5 * 2  # prompts x timesteps x ceil(6 / 4)
    for b, c in zip(base, custom):
        assert torch.equal(b[1], c[1]) and torch.equal(b[2], c[2]) and b[3] == c[3]


def test_constant_difference_gives_its_square():
    r = lfd(zero_eps, lambda x, s, p: torch.full_like(x, 0.5))
    assert r.value == 0.25 and r.stderr == 0.0
    assert all(row.value == 0.25 for row in r.per_timestep)


def test_fisher_weighting_divides_by_sigma_squared():
    # Difference sigma * 0.5 everywhere: |.|^2 / sigma^2 = 0.25 wherever sigma >= the floor.
    def custom(x, sigma, p):
        return sigma.view(-1, 1, 1, 1) * torch.full_like(x, 0.5)

    r = lfd(zero_eps, custom, weighting="fisher", t_range=(100, 999))
    assert r.value == pytest.approx(0.25, rel=1e-6)
    eps_space = lfd(zero_eps, custom, weighting="epsilon", t_range=(100, 999))
    assert eps_space.value > 1.0  # sigma^2 * 0.25 with sigma up to 14.6


def test_fisher_weight_is_clamped_below_the_floor():
    table = sd_sigmas()
    low = int((table < DEFAULT_SIGMA_FLOOR).sum()) - 1  # every timestep 0..low has sigma < floor
    r = lfd(zero_eps, lambda x, s, p: torch.ones_like(x), weighting="fisher", t_range=(0, low),
            n_timesteps=2)
    assert r.value == pytest.approx(1 / DEFAULT_SIGMA_FLOOR ** 2, rel=1e-6)
    looser = lfd(zero_eps, lambda x, s, p: torch.ones_like(x), weighting="fisher", t_range=(0, low),
                 n_timesteps=2, sigma_floor=0.5)
    assert looser.value == pytest.approx(4.0, rel=1e-6)


def test_fisher_on_pure_noise_estimates_one_within_its_standard_error():
    # Clean latents 0: x_t = sigma * eps. A "custom" model returning x_t differs from 0 by
    # sigma * eps: Fisher-weighted, eps^2, whose mean is 1 per element.
    r = latent_fisher_divergence(zero_eps, lambda x, s, p: x,
                                 torch.zeros((2,) + LATENT), sd_sigmas(), 3, n_timesteps=4,
                                 n_samples=16, seed=1, weighting="fisher", sigma_floor=1e-3)
    assert 0 < r.stderr < 0.05
    assert abs(r.value - 1.0) < 4 * r.stderr


# ------------------------------------------------------------------ aggregation

def test_values_aggregate_per_draw_and_per_stratum():
    # Difference = x_t: per draw, mean square of x_t; check against the plan directly.
    plan = make_plan(latents(), sd_sigmas(), 2, n_timesteps=3, n_samples=5, seed=3)
    base = evaluate(plan, zero_eps)
    custom = evaluate(plan, lambda x, s, p: x)
    r = compare(plan, base, custom, "epsilon")
    sq = torch.stack([torch.stack([plan.x_t(p, k, slice(None))[0].double().square().flatten(1).mean(1)
                                   for k in range(3)]) for p in range(2)])  # (P, K, n)
    per_stratum = sq.mean(0)
    per_draw = per_stratum.mean(0)
    assert r.value == pytest.approx(float(per_draw.mean()), rel=1e-12)
    assert r.stderr == pytest.approx(float(per_draw.std() / math.sqrt(5)), rel=1e-12)
    for k, row in enumerate(r.per_timestep):
        assert row.value == pytest.approx(float(per_stratum[k].mean()), rel=1e-12)
        assert row.stderr == pytest.approx(float(per_stratum[k].std() / math.sqrt(5)), rel=1e-12)
    assert r.value == pytest.approx(sum(row.value for row in r.per_timestep) / 3, rel=1e-12)


def test_standard_error_shrinks_with_more_draws():
    def custom(x, s, p):
        return x

    few = lfd(zero_eps, custom, n_samples=4)
    many = lfd(zero_eps, custom, n_samples=64)
    assert many.stderr < few.stderr


# ------------------------------------------------------------------ the draws

def test_plan_is_seeded_and_independent_of_batch_size():
    a = make_plan(latents(), sd_sigmas(), 2, n_timesteps=4, n_samples=7, seed=5)
    b = make_plan(latents(), sd_sigmas(), 2, n_timesteps=4, n_samples=7, seed=5, batch_size=3)
    c = make_plan(latents(), sd_sigmas(), 2, n_timesteps=4, n_samples=7, seed=6)
    assert torch.equal(a.noise, b.noise) and torch.equal(a.t_index, b.t_index)
    assert torch.equal(a.latent_index, b.latent_index)
    assert not torch.equal(a.noise, c.noise)
    assert (a.n_batches, b.n_batches) == (2 * 4 * 1, 2 * 4 * 3)

    def custom(x, s, p):
        return x * 0.1

    assert compare(a, evaluate(a, zero_eps), evaluate(a, custom)).value == \
        compare(b, evaluate(b, zero_eps), evaluate(b, custom)).value


def test_timesteps_are_stratified():
    plan = make_plan(latents(), sd_sigmas(), 1, n_timesteps=4, n_samples=200, seed=0, t_range=(100, 899))
    assert plan.strata == ((100, 299), (300, 499), (500, 699), (700, 899))
    for k, (first, last) in enumerate(plan.strata):
        t = plan.t_index[k]
        assert first <= int(t.min()) and int(t.max()) <= last
        assert int(t.max()) - int(t.min()) > 150  # spread over the stratum, not one point
    torch.testing.assert_close(plan.sigma, sd_sigmas()[plan.t_index])


def test_reference_latents_are_used_equally_often():
    plan = make_plan(latents(3), sd_sigmas(), 1, n_timesteps=1, n_samples=9, seed=2)
    assert sorted(plan.latent_index.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_x_t_is_latent_plus_sigma_noise():
    lat = latents()
    plan = make_plan(lat, sd_sigmas(), 2, n_timesteps=2, n_samples=3, seed=4)
    x, sigma = plan.x_t(1, 0, slice(0, 3))
    expected = lat[plan.latent_index] + plan.sigma[0].view(-1, 1, 1, 1) * plan.noise[1, 0]
    assert torch.equal(x, expected) and torch.equal(sigma, plan.sigma[0])


# ------------------------------------------------------------------ report and errors

def test_report_is_readable():
    r = lfd(zero_eps, lambda x, s, p: torch.full_like(x, 0.5), weighting="fisher")
    text = r.report()
    assert "Latent Fisher divergence" in text and "standard error" in text
    assert "Fisher (score space)" in text and f"{DEFAULT_SIGMA_FLOOR:g}" in text
    assert "2 prompts x 5 timesteps x 6 latent/noise draws = 60 samples" in text
    assert f"d = 4x8x8 = {D}" in text
    assert len(text.splitlines()) == 6 + 5  # header lines + one per stratum


@pytest.mark.parametrize("kw, match", [
    ({"n_samples": 1}, "at least 2"),
    ({"n_timesteps": 0}, "n_timesteps"),
    ({"n_timesteps": 1001}, "n_timesteps"),
    ({"t_range": (5, 1000)}, "t_range"),
    ({"n_prompts": 0}, "prompt"),
    ({"weighting": "l1"}, "weighting"),
    ({"sigma_floor": 0.0}, "sigma_floor"),
    ({"batch_size": 0}, "batch_size"),
    ({"latents": torch.full((2,) + LATENT, float("nan"))}, "NaN"),
    ({"latents": torch.zeros(4)}, "latents"),
    ({"sigma_table": torch.zeros(10)}, "sigma_table"),
])
def test_bad_arguments_are_clear_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        lfd(zero_eps, zero_eps, **kw)


def test_bad_predictions_are_clear_errors():
    with pytest.raises(ValueError, match="shape"):
        lfd(zero_eps, lambda x, s, p: x[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        lfd(zero_eps, lambda x, s, p: x * float("nan"))


def test_mismatched_tables_are_rejected():
    plan = make_plan(latents(), sd_sigmas(), 2, n_timesteps=2, n_samples=2)
    table = evaluate(plan, zero_eps)
    with pytest.raises(ValueError, match="evaluate"):
        compare(plan, table, table[:-1])
