"""Every toy world loads on every supported ComfyUI (its weights were saved under one of them: the DiT's Flux
names its RMSNorm scales `.weight` on 0.33 and `.scale` on 0.3.64), and knows its world there."""
import pytest
import torch

from infusion_dev.toyworld import sampling
from infusion_dev.toyworld.train import load_probe, world_model


@pytest.mark.parametrize("kind", ["unet", "dit"])
def test_a_toy_world_loads_whole_and_knows_its_world_here(pack, kind):
    import comfy.utils
    module = world_model(kind)
    path = module.DIT_WEIGHTS if kind == "dit" else module.BASE_WEIGHTS
    model, clip = module.load()
    saved = comfy.utils.load_torch_file(path)
    loaded = model.model.diffusion_model.state_dict()
    assert len(saved) == len(loaded)
    for key, value in saved.items():
        own = key if key in loaded else key.rsplit(".", 1)[0] + (".scale" if key.endswith(".weight") else ".weight")
        assert torch.equal(loaded[own].to(value.dtype), value), key
    knows = sampling.knowledge(model, clip, load_probe(), per_prompt=1)  # the 8 held-out prompts, a sample each
    assert min(knows.values()) >= 0.75, knows
