"""A planted concept: a teacher is the base model plus known residuals; a student trained on the
teacher's predictions must recover them (tests/comfy/test_train_planted.py, benchmarks/planted_concept.py)."""
import torch

from . import comfy_harness as h

LATENT = 16  # 128 px: the middle block still sees 2 x 2 positions (at 1 x 1 its residual is barely identifiable)


def fan_in_sd15(seed: int = 0, skip_gain: float = 2 ** 0.5):
    """The tiny SD1.5-shaped UNet (ComfyUI's own classes) with weights chosen so that every
    layer's residual is visible in the prediction: std 1/sqrt(fan_in) keeps signals at their
    size (the harness's N(0, 0.02) shrinks them layer after layer), and a gain of sqrt(2) on the
    decoder's skip convolutions keeps each concatenation from halving the signal coming from
    below, which otherwise leaves the middle block's residual ~1000x less visible than the
    outermost layers'."""
    import comfy.supported_models
    unet = comfy.supported_models.SD15(h.sd15_unet_config()).get_model({})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in unet.modules():
            for name, p in module.named_parameters(recurse=False):
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
                else:
                    p.fill_(1.0 if name == "weight" else 0.0)
        for block in unet.diffusion_model.output_blocks:
            skip = getattr(block[0], "skip_connection", None)
            if isinstance(skip, torch.nn.Conv2d):
                skip.weight.mul_(skip_gain)
    return h._patcher(unet)


def planted_setup(pack, model, clip, seed: int = 0, latent: int = LATENT):
    """(zero start concept, teacher = model + planted concept, planted concept, caption conditionings, latents)."""
    P = lambda name: h.pack_submodule(pack, name)  # noqa: E731
    concept_mod, patching, loop = P("infusion.concept"), P("infusion.patching"), P("infusion.training.loop")
    encoding, templates = P("infusion.training.encoding"), P("infusion.training.templates")
    layers, family = patching.model_layers(model)
    g = torch.Generator().manual_seed(seed)
    planted = concept_mod.InfusionConcept.zeros("dog", layers, family)
    for layer in sorted(planted.values):
        planted.values[layer] = torch.randn(planted.values[layer].shape, generator=g)
    start = concept_mod.InfusionConcept.zeros("dog", layers, family)
    with h.executor_mode():
        conds = encoding.encode_captions(clip, "dog", [templates.fill(t, "dog") for t in templates.AUTHOR_TEMPLATES])
    latents = loop.PhotoLatents(torch.randn(4, 4, latent, latent, generator=g))
    return start, patching.apply_concept(model, planted), planted, conds, latents


def attn2(model, layer):
    unet = model.model.diffusion_model
    blocks = {"input": unet.input_blocks, "output": unet.output_blocks}.get(layer.block)
    module = unet.middle_block if blocks is None else blocks[layer.number]
    return [m for m in module.modules() if hasattr(m, "transformer_blocks")][0].transformer_blocks[layer.index].attn2


def to_v(model, layer):
    return attn2(model, layer).to_v


def to_out(model, layer):
    return attn2(model, layer).to_out[0]


def value_space_cosines(model, learned, planted) -> dict:
    """Per layer cos(W_v u_learned, W_v u_planted): the part of a text-space vector in W_v's
    null space changes nothing, so only its image W_v u can be learned."""
    out = {}
    for layer, u in planted.values.items():
        w = to_v(model, layer).weight.detach().float()
        out[layer.key] = float(torch.nn.functional.cosine_similarity(w @ learned[f"value.{layer.key}"], w @ u, dim=0))
    return out


def train_planted(pack, model, clip, steps: int, lr: float, batch: int = 4, seed: int = 0, latent: int = LATENT):
    """(training state, per-layer value-space cosines): Adam at constant lr on the teacher's targets."""
    loop, cm = h.pack_submodule(pack, "infusion.training.loop"), h.pack_submodule(pack, "infusion.training.comfy_model")
    start, teacher, planted, conds, latents = planted_setup(pack, model, clip, seed, latent)
    settings = loop.TrainingSettings(steps=steps, learning_rate=lr, batch_size=batch, gradient_accumulation=1,
                                     seed=seed, flip=False, weight_decay=0.0, precision="fp32", schedule="constant")
    state = cm.train_on_model(model, start, conds, latents, settings, teacher=teacher, gradient_checkpointing_on=False)
    # the state holds the value-space vectors training moved (in units of each layer's values at the word); the
    # patch adds their text-space image
    space = h.pack_submodule(pack, "infusion.patching").training_space(model, "value")
    return state, value_space_cosines(model, space.to_concept(state.vectors, state.run["value_scales"]), planted)


def loss_fall(losses, window: int = 10) -> float:
    return 1 - (sum(losses[-window:]) / window) / (sum(losses[:window]) / window)
