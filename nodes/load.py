from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..infusion.format import load_concept

INFUSION = io.Custom("INFUSION")


class LoadInfusion(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadInfusion",
            display_name="Load Infusion",
            category="Infusion",
            description="Load an Infusion concept (.safetensors) from models/infusion.",
            inputs=[
                io.Combo.Input("concept_name", options=folder_paths.get_filename_list("infusion"),
                               tooltip="A concept file in models/infusion (or a folder added to 'infusion' in "
                                       "extra_model_paths.yaml)."),
            ],
            outputs=[INFUSION.Output(display_name="INFUSION", tooltip="The concept, for Apply Infusion to Model.")],
        )

    @classmethod
    def fingerprint_inputs(cls, concept_name):
        # Re-load when the file changes (e.g. re-trained under the same name).
        path = folder_paths.get_full_path("infusion", concept_name)
        return (concept_name, os.path.getmtime(path), os.path.getsize(path)) if path else concept_name

    @classmethod
    def execute(cls, concept_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("infusion", concept_name)
        return io.NodeOutput(load_concept(path, folders=folder_paths.get_folder_paths("infusion")))


NODES: list[type[io.ComfyNode]] = [LoadInfusion]
