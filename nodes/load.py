from __future__ import annotations

import hashlib

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
        # Re-load when the file's bytes change (trained again under the same name, or replaced by hand with its
        # size and time stamp kept): concept files are KBs to a few hundred KB, so hashing them costs nothing.
        path = folder_paths.get_full_path("infusion", concept_name)
        if not path:
            return concept_name
        with open(path, "rb") as f:
            return concept_name, hashlib.sha256(f.read()).hexdigest()

    @classmethod
    def execute(cls, concept_name) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("infusion", concept_name)
        return io.NodeOutput(load_concept(path, folders=folder_paths.get_folder_paths("infusion")))


NODES: list[type[io.ComfyNode]] = [LoadInfusion]
