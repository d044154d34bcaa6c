"""The residual patch on its own: exact properties the method promises, checked on a real
cross-attention computation (softmax(Q K^T) V with V = W_v(value input))."""
import torch

from infusion.layers import LayerId
from infusion.residual import BATCH_KEY, BatchPositions, InfusionResidual
from infusion.word_carrier import carry_word_positions
from infusion.tokens import CONDITIONING_KEY, WordPositions

from core_helpers import random_concept

LAYER = LayerId("input", 4, 0)
D_CTX, D_V = 768, 64


def attention(n, context, value, wk, wv):
    k, v = context @ wk, value @ wv
    a = torch.softmax(n @ k.transpose(1, 2) / k.shape[-1] ** 0.5, dim=-1)
    return a @ v, a


def options(by_uuid, uuids, sigma=1.0, layer=LAYER):
    return {"block": (layer.block, layer.number), "block_index": layer.index, "uuids": uuids,
            "sigmas": torch.tensor([sigma]), BATCH_KEY: BatchPositions(by_uuid)}


def setup(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.randn(4, 16, D_V, generator=g)  # batch = 2 chunks (positive, negative) x 2 latents
    ctx = torch.randn(4, 77, D_CTX, generator=g)
    wk, wv = torch.randn(D_CTX, D_V, generator=g) / 30, torch.randn(D_CTX, D_V, generator=g) / 30
    by_uuid = {"pos": WordPositions(77, {"dog": (5, 6)}), "neg": WordPositions(77, {})}
    return n, ctx, wk, wv, by_uuid


def test_no_word_returns_the_very_same_tensors():
    n, ctx, _, _, _ = setup()
    patch = InfusionResidual(random_concept())
    by_uuid = {"a": WordPositions(77, {}), "b": WordPositions(77, {"cat": (3,)})}
    out = patch(n, ctx, ctx, options(by_uuid, ["a", "b"]))
    assert out[0] is n and out[1] is ctx and out[2] is ctx


def test_only_the_word_rows_of_the_prompt_with_the_word_change():
    n, ctx, wk, wv, by_uuid = setup()
    original = ctx.clone()  # the text as the base model gets it, kept apart from what the patch is handed
    patch = InfusionResidual(random_concept())
    _, new_ctx, new_val = patch(n, ctx, ctx, options(by_uuid, ["pos", "neg"]))
    # Keys untouched, so the attention maps stay the base model's: the very tensor, not written in place.
    assert new_ctx is ctx and torch.equal(ctx, original)
    changed = (new_val != original).any(-1)
    expected = torch.zeros(4, 77, dtype=torch.bool)
    expected[:2, 5:7] = True
    assert torch.equal(changed, expected)
    base, a = attention(n, original, original, wk, wv)  # the base model's output and attention map
    patched, _ = attention(n, new_ctx, new_val, wk, wv)
    assert torch.equal(patched[2:], base[2:])  # negative branch bit-identical
    u = patch.values[patch.layers.index(LAYER)].detach()
    expected_delta = a[:2, :, 5:7].sum(-1, keepdim=True) * (u @ wv)
    torch.testing.assert_close(patched[:2] - base[:2], expected_delta, rtol=1e-4, atol=1e-5)


def test_strength_zero_is_the_base_and_change_is_linear_in_strength():
    n, ctx, wk, wv, by_uuid = setup()
    concept = random_concept()
    zero = InfusionResidual(concept, strength=0.0)(n, ctx, ctx, options(by_uuid, ["pos", "neg"]))
    assert zero[2] is ctx
    base, _ = attention(n, ctx, ctx, wk, wv)
    deltas = {}
    for s in (0.5, 1.0, -2.0):
        _, c, v = InfusionResidual(concept, strength=s)(n, ctx, ctx, options(by_uuid, ["pos", "neg"]))
        deltas[s] = attention(n, c, v, wk, wv)[0] - base
    torch.testing.assert_close(deltas[1.0], 2 * deltas[0.5], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(deltas[-2.0], -2 * deltas[1.0], rtol=1e-4, atol=1e-5)


def test_key_value_variant_changes_keys_only_at_the_word():
    n, ctx, _, _, by_uuid = setup()
    patch = InfusionResidual(random_concept(variant="key+value"))
    _, new_ctx, new_val = patch(n, ctx, ctx, options(by_uuid, ["pos", "neg"]))
    at_the_word = torch.zeros(4, 77, dtype=torch.bool)
    at_the_word[:2, 5:7] = True
    assert torch.equal((new_ctx != ctx).any(-1), at_the_word)
    assert torch.equal((new_val != ctx).any(-1), at_the_word)
    assert not torch.equal(new_ctx, new_val)  # a residual of its own for the keys


def test_layers_outside_the_concept_and_sigma_range_are_untouched():
    n, ctx, _, _, by_uuid = setup()
    patch = InfusionResidual(random_concept())
    unknown = options(by_uuid, ["pos", "neg"], layer=LayerId("output", 99, 0))
    assert patch(n, ctx, ctx, unknown)[2] is ctx
    timed = InfusionResidual(random_concept(), sigma_range=(5.0, 1.0))
    assert timed(n, ctx, ctx, options(by_uuid, ["pos", "neg"], sigma=0.5))[2] is ctx
    assert timed(n, ctx, ctx, options(by_uuid, ["pos", "neg"], sigma=9.0))[2] is ctx
    assert timed(n, ctx, ctx, options(by_uuid, ["pos", "neg"], sigma=2.0))[2] is not ctx


def test_fp16_cast_by_comfy_keeps_fp32_masters_and_applies_in_half():
    concept = random_concept()
    patch = InfusionResidual(concept)
    assert patch.to(torch.float16) is patch
    assert all(p.dtype == torch.float32 for p in patch.values)
    assert torch.equal(patch.values[patch.layers.index(LAYER)].detach(), concept.values[LAYER])
    n, ctx, _, _, by_uuid = setup()
    _, _, v = patch(n.half(), ctx.half(), ctx.half(), options(by_uuid, ["pos", "neg"]))
    assert v.dtype == torch.float16
    assert torch.equal(v[0, 5], ctx[0, 5].half() + concept.values[LAYER].half())


def test_longer_prompt_tiled_in_a_batch_gets_every_repeat():
    rows = BatchPositions({"x": WordPositions(77, {"dog": (4,)})}).rows("dog", ["x"], 2, 154, torch.device("cpu"))
    assert sorted(zip(rows[0].tolist(), rows[1].tolist())) == [(0, 4), (0, 81), (1, 4), (1, 81)]


def test_wrapper_maps_conditioning_uuids_to_positions():
    pos = WordPositions(77, {"dog": (1,)})
    conds = [[{"uuid": "u1", CONDITIONING_KEY: pos}, {"uuid": "u2"}], None]
    seen = {}

    def executor(model, conds, x, t, model_options):
        seen.update(model_options["transformer_options"][BATCH_KEY].by_uuid)
        return "out"

    original = {"transformer_options": {"patches": {}}}
    assert carry_word_positions(executor, None, conds, None, None, original) == "out"
    assert seen == {"u1": pos}
    assert BATCH_KEY not in original["transformer_options"]


def test_gradients_reach_only_the_residuals():
    n, ctx, wk, wv, by_uuid = setup()
    patch = InfusionResidual(random_concept(), trainable=True)
    wv.requires_grad_(False)
    _, c, v = patch(n, ctx, ctx, options(by_uuid, ["pos", "neg"]))
    attention(n, c, v, wk, wv)[0].square().mean().backward()
    grads = [p.grad for p in patch.values]
    assert grads[patch.layers.index(LAYER)] is not None and grads[patch.layers.index(LAYER)].abs().sum() > 0
    assert all(g is None for i, g in enumerate(grads) if i != patch.layers.index(LAYER))
