"""Every model family the running ComfyUI runs (comfy/supported_models.py's `models`) has one row in the pack's
family table (infusion/families/catalog.py), and a model of it, in ComfyUI's own classes, is held to that row:
served by the adapter the row names, whose layers read the text (or, where this ComfyUI's version of the family is
one the adapter cannot reach, refused saying so and to update ComfyUI), or refused by name with the row's reason. A
family ComfyUI adds later fails here until it has a row. The served families' exact promises and training are
tested on their tiny models (test_dit.py, test_unet*.py), and here on tiny models of the served variants that read
their base's text encoder; docs/families.md is this table for users."""
import re
from pathlib import Path

import pytest

from infusion_dev import comfy_harness as h
from infusion_dev import family_models

DOCS = Path(__file__).resolve().parents[2] / "docs" / "families.md"


def comfyui_families() -> list[str]:
    import comfy.supported_models
    return [config.__name__ for config in comfy.supported_models.models]


def test_every_family_comfyui_runs_has_one_row_and_is_held_to_it(pack):
    catalog = h.pack_submodule(pack, "infusion.families.catalog")
    families = h.pack_submodule(pack, "infusion.families")
    rows = (catalog.SERVED, catalog.NOTHING_TO_ACT_ON, catalog.REFUSED)
    assert not set(rows[0]) & set(rows[1]) and not set(rows[0]) & set(rows[2]) and not set(rows[1]) & set(rows[2])
    missing = [name for name in comfyui_families() if not any(name in row for row in rows)]
    assert not missing, f"families with no row in infusion/families/catalog.py: {missing}"

    wrong = {}
    for name in comfyui_families():
        if name not in family_models.names():
            # Only families a concept has nothing to act on, and Wan's variants with blocks of their own (refused),
            # go without a model here.
            assert name in catalog.NOTHING_TO_ACT_ON or name.startswith("WAN") and name in catalog.REFUSED, (
                f"{name}: no model in family_models.py")
            continue
        model = family_models.family_model(name)
        if families.model_family(model) != name:
            wrong[name] = f"ComfyUI names it {families.model_family(model)}"
        elif name in catalog.SERVED:
            try:
                adapter = families.adapter_for(model)
            except ValueError as e:  # this ComfyUI's version of the family, which the adapter cannot reach
                if not re.search(f"this is a {name} model, which Infusion cannot reach here: .*update ComfyUI", str(e)):
                    wrong[name] = str(e)
                continue
            layers = adapter.layers(model.get_model_object("diffusion_model"))
            if adapter.name != catalog.SERVED[name] or not layers:
                wrong[name] = f"served by {adapter.name} with {len(layers)} layers"
        else:
            try:
                families.adapter_for(model)
                wrong[name] = "not refused"
            except ValueError as e:
                if not str(e).startswith(catalog.refusal(name)):
                    wrong[name] = str(e)
    assert not wrong, wrong


@pytest.mark.parametrize("name", list(family_models.VARIANTS))
def test_a_served_variant_keeps_the_exact_promises_on_a_tiny_model_of_its_own(pack, name):
    """Served variants of a family (inpainting, instruct-pix2pix, the x4 upscaler, SDXL's distillations) on a tiny model
    of their own layout (family_models.variant_model), through ComfyUI's sampler: a prompt without the word is the
    variant's own picture bit for bit, and the word changes it."""
    import comfy.supported_models
    import torch

    if not hasattr(comfy.supported_models, name):
        pytest.skip(f"this ComfyUI has no {name}")
    model, clip = family_models.variant_model(name)
    families, concept_mod = h.pack_submodule(pack, "infusion.families"), h.pack_submodule(pack, "infusion.concept")
    layers, family = h.pack_submodule(pack, "infusion.patching").model_layers(model)
    concept = concept_mod.InfusionConcept.zeros("dog", layers, family,
                                                vector_space=families.adapter_for(model).vector_space)
    g = torch.Generator().manual_seed(0)
    for layer in sorted(concept.values):
        concept.values[layer] = torch.randn(concept.values[layer].shape, generator=g)
    import nodes
    applied, word_clip = nodes.NODE_CLASS_MAPPINGS["ApplyInfusion"].execute(model, clip, concept, 1.0).result
    latent = {"samples": torch.zeros(1, model.get_model_object("latent_format").latent_channels, 8, 8)}

    def draw(m, c, text):
        return h.sample(m, h.encode(c, text), h.encode(c, "blurry"), latent)["samples"]

    assert torch.equal(draw(applied, word_clip, "a photo of a cat"), draw(model, clip, "a photo of a cat"))
    assert not torch.equal(draw(applied, word_clip, "a photo of a dog"), draw(model, clip, "a photo of a dog"))


def test_the_families_page_has_the_tables_rows(pack):
    """docs/families.md lists every family of the table, each under the heading its row says."""
    catalog = h.pack_submodule(pack, "infusion.families.catalog")
    sections = dict(re.findall(r"^## (\w[^\n]*)\n(.*?)(?=^## |\Z)", DOCS.read_text(), re.S | re.M))
    listed = {title: set(re.findall(r"^\| `(\w+)`", body, re.M)) for title, body in sections.items()}
    assert listed.get("Served") == set(catalog.SERVED)
    assert listed.get("Refused: nothing to act on") == set(catalog.NOTHING_TO_ACT_ON)
    assert listed.get("Refused: not reached yet") == set(catalog.REFUSED)
