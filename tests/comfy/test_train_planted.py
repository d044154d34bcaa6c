"""Planted concept: a teacher is the base model plus known residuals; the student, trained on
the teacher's predictions, must recover them. Also: gradients reach every layer's vector and
nothing else, and gradient checkpointing changes nothing.

The setup lives in infusion_dev/planted.py; its longer run is benchmarks/planted_concept.py.
"""
import pytest
import torch

from infusion_dev import comfy_harness as h
from infusion_dev.planted import fan_in_sd15, loss_fall, planted_setup, to_out, to_v, train_planted

def test_planted_concept_is_recovered(pack, sd15):
    _, clip = sd15
    state, cosines = train_planted(pack, fan_in_sd15(), clip, steps=120, lr=0.1, batch=2)
    assert loss_fall(state.losses) >= 0.9, state.losses
    assert len(cosines) == 16 and min(cosines.values()) >= 0.8, cosines


def test_only_the_vectors_receive_gradients_and_every_vector_does(pack, sd15):
    model, clip = sd15
    loop, cm = h.pack_submodule(pack, "infusion.training.loop"), h.pack_submodule(pack, "infusion.training.comfy_model")
    start, _, _, conds, latents = planted_setup(pack, model, clip, latent=8)
    seen = []

    class Inspect(loop.TrainingHooks):
        def on_step(self, step, total, losses):
            # during training the model holds autograd-ready copies of its weights: none may ask
            # for or hold a gradient
            seen.append([(p.requires_grad, p.grad) for p in model.model.parameters()])

    settings = loop.TrainingSettings(steps=1, batch_size=2, gradient_accumulation=1, precision="fp32", flip=False)
    state = cm.train_on_model(model, start, conds, latents, settings, Inspect())
    assert seen and all(flag is False and grad is None for flag, grad in seen[0])
    # AdamW's first step moves exactly the vectors that received a non-zero gradient
    assert all(v.abs().sum() > 0 for v in state.vectors.values()) and len(state.vectors) == 16


def test_gradient_checkpointing_changes_nothing(pack, sd15):
    model, clip = sd15
    loop, cm = h.pack_submodule(pack, "infusion.training.loop"), h.pack_submodule(pack, "infusion.training.comfy_model")
    start, _, _, conds, latents = planted_setup(pack, model, clip, latent=8)
    settings = loop.TrainingSettings(steps=2, batch_size=2, gradient_accumulation=2, precision="fp32", flip=False,
                                     learning_rate=0.1)
    plain = cm.train_on_model(model, start, conds, latents, settings, gradient_checkpointing_on=False)
    checkpointed = cm.train_on_model(model, start, conds, latents, settings, gradient_checkpointing_on=True)
    assert checkpointed.losses == plain.losses
    for name, v in plain.vectors.items():
        torch.testing.assert_close(checkpointed.vectors[name], v, rtol=1e-5, atol=1e-7)


def test_first_step_moves_the_values_by_the_learning_rate_over_the_output_gain(pack, sd15):
    """AdamW's first step moves each trained coordinate by the learning rate. Training in value space in units
    of each layer's output gain, every layer's value at the word moves by exactly +-lr x s_l in every
    coordinate, s_l = 1 / (root mean square of the singular values of the layer's to_out projection), whatever
    W_v's scale; the patch adds the text-space vector that makes that change. (On the harness's N(0, 0.02)
    weights most gradients are near AdamW's eps, which shortens the step.)"""
    model, clip = fan_in_sd15(), sd15[1]
    loop, cm = h.pack_submodule(pack, "infusion.training.loop"), h.pack_submodule(pack, "infusion.training.comfy_model")
    start, _, _, conds, latents = planted_setup(pack, model, clip, latent=8)
    lr = 0.01
    settings = loop.TrainingSettings(steps=1, learning_rate=lr, batch_size=2, gradient_accumulation=1,
                                     precision="fp32", flip=False)
    state = cm.train_on_model(model, start, conds, latents, settings)
    scales = state.run["value_scales"]
    text = h.pack_submodule(pack, "infusion.patching").training_space(model, "value").to_concept(state.vectors, scales)
    for layer in start.values:
        out = to_out(model, layer).weight.detach().double()
        gain = float(torch.linalg.svdvals(out).square().mean().sqrt())
        assert scales[f"value.{layer.key}"] == pytest.approx(1 / gain, rel=1e-5)
        step = to_v(model, layer).weight.detach().float() @ text[f"value.{layer.key}"] / scales[f"value.{layer.key}"]
        # lr * g / (|g| + eps): lr where the gradient is well above eps (in text space, W_v's spread instead)
        assert (step.abs() <= lr * (1 + 1e-4)).all(), step
        assert step.abs().median() >= 0.99 * lr, step
