"""Proof that it learns: on the toy world (infusion_dev/toyworld), whose base model truly knows its world, an
Infusion concept trained through the node from 5 photos is drawn, while prompts without its word stay
exactly the base model's. The full comparison with ComfyUI's Train LoRA is benchmarks/toyworld.py."""
import pytest
import torch

from infusion_dev.toyworld import customize as cz
from infusion_dev.toyworld import model as tw
from infusion_dev.toyworld import sampling
from infusion_dev.toyworld.train import load_probe


@pytest.fixture(scope="module")
def world(pack):
    model, clip = tw.load()  # a missing fixture raises, naming the command that builds it
    return model, clip, load_probe()


def test_the_base_model_knows_the_world_on_held_out_prompts(world):
    """Combinations never seen in training (a red ring on stripes, ...), read by the probe."""
    model, clip, probe = world
    knows = sampling.knowledge(model, clip, probe, per_prompt=4)
    assert knows["colour"] >= 0.95 and knows["shape"] >= 0.9 and knows["background"] >= 0.9, knows


def test_the_probe_reads_fresh_scenes(world):
    import random
    from infusion_dev.toyworld.probe import accuracy
    assert min(accuracy(world[2], random.Random(5), 1000).values()) >= 0.99


def assert_concept_drawn_and_others_exact(model, clip, probe):
    """The known concept trained through the node at its defaults is drawn; prompts without its word are
    the base model's bit for bit; "a triangle" alone gives triangles of any colour."""
    concept = cz.train_infusion(model, clip, cz.KNOWN.photos())
    applied, word_clip = cz.apply_infusion(model, clip, concept)
    drawn = cz.context_samples(applied, word_clip, probe, per_background=4, seed=300)
    assert drawn.concept_rate(cz.KNOWN) >= 0.8 and drawn.context_rate() == 1.0, drawn.readings
    for prompt in ("a red ring on checks", "a blue cross"):
        assert torch.equal(sampling.sample(applied, word_clip, prompt, 4, seed=7),
                           sampling.sample(model, clip, prompt, 4, seed=7))
    base = cz.context_samples(model, clip, probe, per_background=4, seed=300)
    assert base.concept_rate(cz.KNOWN) < 0.4


def test_an_infusion_concept_is_drawn_and_leaves_other_prompts_exact(world):
    """"a green triangle" from 5 photos on stripes: "a triangle on <any background>" then draws it."""
    assert_concept_drawn_and_others_exact(*world)
