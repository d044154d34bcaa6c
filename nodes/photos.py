"""Load Concept Photos: every photo in a folder as an IMAGE batch, with masks from alpha.

Thin wrapper: reading and cropping live in ../infusion/training/photo_folder.py.
"""
from __future__ import annotations

import os

from comfy_api.latest import io

from ..infusion.training.captions import caption_path
from ..infusion.training.photo_folder import load_photo_folder, photo_files

CAPTIONS = io.Custom("INFUSION_CAPTIONS")


def _resolve(folder: str) -> str:
    import folder_paths
    folder = os.path.expanduser(folder.strip())
    return folder if os.path.isabs(folder) else os.path.join(folder_paths.get_input_directory(), folder)


class LoadConceptPhotos(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LoadConceptPhotos",
            display_name="Load Concept Photos",
            category="Infusion/train",
            description="Read every photo in a folder (png, jpg, webp, bmp, tiff; any size and aspect), and the "
                        "caption beside each (<photo>.txt), for Train Infusion Concept. Re-reads when the folder's "
                        "files change.",
            inputs=[
                io.String.Input("folder", default="concept",
                                tooltip="The folder of photos: an absolute path, or a folder inside ComfyUI's input "
                                        "directory."),
                io.Int.Input("size", default=1024, min=64, max=4096, step=64,
                             tooltip="A photo whose shorter side is longer is scaled down to this, keeping its "
                                     "aspect (nothing is cropped or enlarged here). Train Infusion Concept fits each "
                                     "photo to its training size: keep this at least its resolution."),
            ],
            outputs=[
                io.Image.Output(display_name="photos", is_output_list=True,
                                tooltip="The photos, sorted by file name, each at its own aspect (a list: photos "
                                        "of different sizes cannot share one batch)."),
                io.Mask.Output(display_name="masks", is_output_list=True,
                               tooltip="Foreground masks from the photos' alpha channels (1 = opaque = the "
                                       "concept; 1 everywhere for photos without transparency), one per photo."),
                CAPTIONS.Output(display_name="captions",
                                tooltip="The caption beside each photo (dog1.txt for dog1.png), for Train Infusion "
                                        "Concept; each must say the class word (or {} for it). Photos without one "
                                        "use the templates. Nothing when no photo has a caption."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, size):
        try:
            files = photo_files(_resolve(folder))
        except ValueError as e:
            return str(e)
        captions = [caption_path(f) for f in files]
        return size, tuple((f, os.path.getmtime(f), os.path.getsize(f)) for f in files + captions if os.path.isfile(f))

    @classmethod
    def execute(cls, folder, size) -> io.NodeOutput:
        return io.NodeOutput(*load_photo_folder(_resolve(folder), size))


NODES: list[type[io.ComfyNode]] = [LoadConceptPhotos]
