"""Training a text-space concept in the authors' value space: the fixed map W^+ and the residual that
trains through it."""
import pytest
import torch

from infusion.concept import InfusionConcept
from infusion.layers import LayerId
from infusion.residual import InfusionResidual
from infusion.value_space import ValueSpace, pseudo_inverse, scale_of

LAYERS = [LayerId("input", 1, 0), LayerId("output", 3, 0)]


def weight(out, inp, singular_values, seed=0, directions=False):
    """A [out, in] weight with the given singular values (the rest 1) along random directions (and, with
    `directions`, its value directions, one column per singular value)."""
    g = torch.Generator().manual_seed(seed)
    k = min(out, inp)
    a, _ = torch.linalg.qr(torch.randn(out, k, generator=g, dtype=torch.float64))
    b, _ = torch.linalg.qr(torch.randn(inp, k, generator=g, dtype=torch.float64))
    s = torch.ones(k, dtype=torch.float64)
    s[:len(singular_values)] = torch.tensor(singular_values, dtype=torch.float64)
    w = (a * s) @ b.T
    return (w, a) if directions else w


@pytest.mark.parametrize("shape", [(32, 128), (128, 32)])  # a value narrower and wider than the text
def test_pseudo_inverse_is_torchs_on_well_conditioned_weights(shape):
    w = weight(*shape, [3.0, 0.2])
    torch.testing.assert_close(pseudo_inverse(w).double(), torch.linalg.pinv(w), rtol=1e-5, atol=1e-6)


def test_narrow_layer_reaches_every_value_exactly():
    """d <= text width: W W^+ = I, so the trained r is the value step itself."""
    w = weight(32, 128, [5.0, 0.1]).float()
    torch.testing.assert_close(w @ pseudo_inverse(w), torch.eye(32), rtol=0, atol=1e-5)


def test_directions_w_barely_makes_are_left_out():
    """Below 1 % of the largest singular value the text vector would be too large for fp16: dropped."""
    w, a = weight(16, 64, [1.0, 0.005, 0.02], seed=1, directions=True)
    p = pseudo_inverse(w).double()
    faint, kept = a[:, 1], a[:, 2]  # the value directions of singular values 0.005 and 0.02
    assert (p @ faint).abs().max() < 1e-5  # untruncated: 1 / 0.005 = 200 times that direction
    torch.testing.assert_close(w @ p @ kept, kept, rtol=0, atol=1e-6)
    assert torch.linalg.matrix_norm(p, ord=2) <= 1 / 0.02 + 1e-6


def test_trained_residual_adds_the_text_image_of_its_value_vectors():
    widths = {LAYERS[0]: 32, LAYERS[1]: 64}
    weights = {l: weight(widths[l], 128, [2.0], seed=i).float() for i, l in enumerate(LAYERS)}
    space = ValueSpace({"value": {}}, {"value": weights})
    concept = InfusionConcept.zeros("dog", {l: (128, widths[l]) for l in LAYERS}, "custom")
    residual = InfusionResidual(concept, trainable=True, space=space, strength=2.0)
    assert [p.shape[0] for p in residual.values] == [32, 64]  # value width, not text width
    r = torch.randn(64)
    with torch.no_grad():
        residual.values[1].copy_(r)
    u = residual.scaled(1)
    torch.testing.assert_close(weights[LAYERS[1]] @ u, 2 * r, rtol=0, atol=1e-5)
    torch.testing.assert_close(space.to_concept({"value.output.3.0": r}, {"value.output.3.0": 1.0})["value.output.3.0"],
                               u / 2)
    u.sum().backward()
    assert residual.values[1].grad is not None and residual.values[0].grad is None


def test_trained_vectors_are_in_units_of_each_layers_output_gain():
    """r_l = s_l rho_l: the patch adds W^+ (s_l rho_l); the concept stores the same vector."""
    widths = {LAYERS[0]: 32, LAYERS[1]: 64}
    weights = {l: weight(widths[l], 128, [2.0], seed=i).float() for i, l in enumerate(LAYERS)}
    space = ValueSpace({"value": {}}, {"value": weights})
    concept = InfusionConcept.zeros("dog", {l: (128, widths[l]) for l in LAYERS}, "custom")
    residual = InfusionResidual(concept, trainable=True, space=space)
    scales = {"value.input.1.0": 0.5, "value.output.3.0": 7.0}
    residual.set_scales(scales)
    rho = torch.randn(64)
    with torch.no_grad():
        residual.values[1].copy_(rho)
    torch.testing.assert_close(weights[LAYERS[1]] @ residual.scaled(1), 7.0 * rho, rtol=0, atol=1e-4)
    stored = space.to_concept({"value.output.3.0": rho}, scales)["value.output.3.0"]
    torch.testing.assert_close(stored, residual.scaled(1))


def test_a_layers_scale_is_one_over_its_output_projections_gain():
    """s = 1 / (root mean square of the singular values): values x a with the output projection / a (the same
    model) gives s x a, so rho, and the concept it makes, stay the same."""
    out = weight(32, 32, [4.0, 0.5, 2.0], seed=3).float()
    singular = torch.linalg.svdvals(out.double())
    assert scale_of(out) == pytest.approx(float(1 / singular.square().mean().sqrt()), rel=1e-5)
    assert scale_of(out / 10) == pytest.approx(10 * scale_of(out), rel=1e-5)
    space = ValueSpace({"value": {LAYERS[0]: out, LAYERS[1]: 2 * out}})
    assert space.scales == {"value.input.1.0": scale_of(out), "value.output.3.0": pytest.approx(scale_of(out) / 2)}


def test_value_space_training_starts_from_zeros():
    space = ValueSpace({"value": {}}, {"value": {LAYERS[0]: weight(32, 128, []).float()}})
    concept = InfusionConcept.zeros("dog", {LAYERS[0]: (128, 32)}, "custom")
    concept.values[LAYERS[0]] = torch.ones(128)
    with pytest.raises(ValueError, match="starts from zero"):
        InfusionResidual(concept, trainable=True, space=space)
