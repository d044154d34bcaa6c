"""Load Concept Photos: a folder of any-size photos to IMAGE + MASK, with clear errors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

import comfy_harness as h


def node(pack):
    return h.pack_submodule(pack, "nodes.photos").LoadConceptPhotos


@pytest.fixture
def photo_dir(tmp_path):
    rgba = np.zeros((60, 100, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[:, 35:65, 3] = 255  # opaque centre band: the concept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.full((80, 50, 3), 90, dtype=np.uint8)).save(tmp_path / "b.jpg")
    (tmp_path / "notes.txt").write_text("not a photo")
    return tmp_path


def test_reads_every_photo_any_size_with_masks_from_alpha(pack, photo_dir):
    photos, masks = h.run_node(node(pack), str(photo_dir), 64).result
    assert photos.shape == (2, 64, 64, 3) and masks.shape == (2, 64, 64)
    assert torch.allclose(photos[0, ..., 0], torch.full((64, 64), 200 / 255), atol=1e-3)
    assert torch.equal(masks[1], torch.ones(64, 64))  # no alpha: all concept
    # a.png is 100 x 60: scaled to 107 x 64, columns 21..85 kept; the opaque band 35..65 lands on 16..48
    assert masks[0, :, 32].min() > 0.99 and masks[0, :, 2].max() < 0.01


def test_relative_folders_resolve_in_the_input_directory(pack, photo_dir):
    import folder_paths
    target = os.path.join(folder_paths.get_input_directory(), "my_dog")
    os.makedirs(target, exist_ok=True)
    Image.open(photo_dir / "b.jpg").save(os.path.join(target, "b.jpg"))
    photos, _ = h.run_node(node(pack), "my_dog", 64).result
    assert photos.shape == (1, 64, 64, 3)


def test_reloads_when_the_folder_changes(pack, photo_dir):
    before = node(pack).fingerprint_inputs(str(photo_dir), 64)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(photo_dir / "c.png")
    assert node(pack).fingerprint_inputs(str(photo_dir), 64) != before


def test_clear_errors(pack, tmp_path, photo_dir):
    with pytest.raises(ValueError, match="photo folder not found"):
        h.run_node(node(pack), str(tmp_path / "nowhere"), 64)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos in"):
        h.run_node(node(pack), str(tmp_path / "empty"), 64)
    (photo_dir / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="cannot read photo broken.png"):
        h.run_node(node(pack), str(photo_dir), 64)
