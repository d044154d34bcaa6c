"""Proof that it learns, on the toy world's DiT (infusion_dev/toyworld/dit.py): a FLUX.1 in ComfyUI's own classes that
knows the same world as the UNet of test_toyworld.py. An Infusion concept trained through the node at its defaults
is drawn, while prompts without its word stay exactly the base model's."""
import pytest

from infusion_dev.toyworld import sampling
from infusion_dev.toyworld.train import load_probe

from test_toyworld import assert_concept_drawn_and_others_exact


@pytest.fixture(scope="module")
def dit_world(pack):
    from infusion_dev.toyworld import dit
    model, clip = dit.load()
    return model, clip, load_probe()


def test_the_dit_is_a_flux_checkpoint_to_comfyui(dit_world):
    """ComfyUI's own Flux classes and flow-matching model sampling (what its sampler and Train LoRA read)."""
    import comfy.ldm.flux.model
    import comfy.model_sampling
    model = dit_world[0]
    assert isinstance(model.model.diffusion_model, comfy.ldm.flux.model.Flux)
    assert isinstance(model.model.model_sampling, comfy.model_sampling.ModelSamplingFlux)
    assert sum(p.numel() for p in model.model.diffusion_model.parameters()) <= 3_000_000


def test_the_dit_knows_the_world_on_held_out_prompts(dit_world):
    model, clip, probe = dit_world
    knows = sampling.knowledge(model, clip, probe, per_prompt=4)
    assert min(knows.values()) >= 0.9, knows


def test_a_dit_concept_is_drawn_and_leaves_other_prompts_exact(dit_world):
    """The default variant (every query sees the residual), at the same defaults as the UNet."""
    assert_concept_drawn_and_others_exact(*dit_world)
