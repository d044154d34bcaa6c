"""ComfyUI node wrappers (V3 schema). The logic lives in ../infusion."""
from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import ComfyExtension, io

from . import apply, concepts, load, metrics, photos, train


def _register_model_folder() -> None:
    # models/infusion, plus any 'infusion' paths from extra_model_paths.yaml (loaded before packs).
    folder_paths.add_model_folder_path("infusion", os.path.join(folder_paths.models_dir, "infusion"), is_default=True)
    paths, _ = folder_paths.folder_names_and_paths["infusion"]
    folder_paths.folder_names_and_paths["infusion"] = (paths, {".safetensors"})


_register_model_folder()


class InfusionExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*photos.NODES, *train.NODES, *load.NODES, *apply.NODES, *concepts.NODES, *metrics.NODES]


async def comfy_entrypoint() -> InfusionExtension:
    return InfusionExtension()
