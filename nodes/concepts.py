"""The concept tools: Infusion Concept Info, Blend Infusion Concepts, Save Infusion.

Thin wrappers: the logic lives in ../infusion/concept_tools.py.
"""
from __future__ import annotations

import dataclasses
import os

from comfy_api.latest import io, ui

from ..infusion.format import load_concept, save_concept
from ..infusion.images import to_image
from ..infusion.concept_tools import blend, norms_chart, report, residual_norms
from ..infusion.training.session import check_name
from .load import INFUSION


class InfusionConceptInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="InfusionConceptInfo",
            display_name="Infusion Concept Info",
            category="Infusion/concepts",
            description="What a concept is (word, model, layers, training, lineage) and where it lives: the size of "
                        "its residual in each layer, grouped by block.",
            inputs=[
                INFUSION.Input("infusion", tooltip="A concept from Load Infusion, Train, Blend or Save."),
                io.Model.Input("model", optional=True,
                               tooltip="Optional: its base model; the norms are then taken where the residual acts, "
                                       "in value space (|W_v u|), instead of in text space (|u|)."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The readable report (wire it to a Preview Any node)."),
                io.Image.Output(display_name="layer_norms", tooltip="The residual's norm per layer, by block."),
            ],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, infusion, model=None) -> io.NodeOutput:
        norms = residual_norms(infusion, model)
        space = "|u|" if model is None else "|W_v u|"
        text = report(infusion, norms, value_space=model is not None)
        chart = to_image(norms_chart(norms, f"{infusion.label}: {space} per layer"))
        return io.NodeOutput(text, chart, ui=ui.PreviewText(text))


class BlendInfusionConcepts(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BlendInfusionConcepts",
            display_name="Blend Infusion Concepts",
            category="Infusion/concepts",
            description="weight x A + (1 - weight) x B, layer by layer, for two concepts of the same model.",
            inputs=[
                INFUSION.Input("concept_a", tooltip="Concept A."),
                INFUSION.Input("concept_b", tooltip="Concept B (the same model's layers and variant as A)."),
                io.Float.Input("weight", default=0.5, min=-10.0, max=10.0, step=0.01,
                               tooltip="A's share: 1 = A, 0 = B; outside 0..1 extrapolates."),
                io.String.Input("word", default="", tooltip="The blend's class word; empty = A's word."),
            ],
            outputs=[INFUSION.Output(display_name="INFUSION", tooltip="The blend, for Apply, Info or Save.")],
        )

    @classmethod
    def execute(cls, concept_a, concept_b, weight, word) -> io.NodeOutput:
        return io.NodeOutput(blend(concept_a, concept_b, weight, word))


class SaveInfusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="SaveInfusion",
            display_name="Save Infusion",
            category="Infusion/concepts",
            description="Save a concept (a blend, a re-bound one) to models/infusion, with its lineage.",
            inputs=[
                INFUSION.Input("infusion", tooltip="The concept to save."),
                io.String.Input("output_name", default="my_blend",
                                tooltip="File name in models/infusion (<name>.safetensors); an existing file of "
                                        "that name is replaced (atomically)."),
                io.Combo.Input("precision", options=["fp16", "fp32"], default="fp16",
                               tooltip="fp16: half the size, what training saves; fp32: every bit of a blend."),
            ],
            outputs=[INFUSION.Output(display_name="INFUSION", tooltip="The concept as saved (and as Load reads it)."),
                     io.String.Output(display_name="path", tooltip="Where it was saved.")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, infusion, output_name, precision) -> io.NodeOutput:
        import folder_paths
        name = check_name(output_name)
        path = save_concept(dataclasses.replace(infusion, name=name),
                            os.path.join(folder_paths.get_folder_paths("infusion")[0], f"{name}.safetensors"),
                            dtype=precision)
        return io.NodeOutput(load_concept(path), path, ui=ui.PreviewText(f"saved {path}"))


NODES: list[type[io.ComfyNode]] = [InfusionConceptInfo, BlendInfusionConcepts, SaveInfusion]
