"""Load Concept Photos: a folder of any-size photos to IMAGE + MASK, with clear errors."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from infusion_dev import comfy_harness as h


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


def test_reads_every_photo_at_its_own_aspect_with_masks_from_alpha(pack, photo_dir):
    photos, masks, _ = h.run_node(node(pack), str(photo_dir), 64).result
    # a list, each photo at its own aspect, nothing cropped; shorter sides over 64 scaled down, none enlarged
    assert [tuple(p.shape) for p in photos] == [(1, 60, 100, 3), (1, 80, 50, 3)]
    assert [tuple(m.shape) for m in masks] == [(1, 60, 100), (1, 80, 50)]
    assert torch.allclose(photos[0][0, ..., 0], torch.full((60, 100), 200 / 255), atol=1e-3)
    assert torch.equal(masks[1][0], torch.ones(80, 50))  # no alpha: all concept
    assert torch.equal(masks[0][0, :, 35:65], torch.ones(60, 30)) and masks[0][0].sum() == 60 * 30  # the band
    smaller, _, _ = h.run_node(node(pack), str(photo_dir), 40).result
    assert [tuple(p.shape) for p in smaller] == [(1, 40, 67, 3), (1, 64, 40, 3)]


def test_relative_folders_resolve_in_the_input_directory(pack, photo_dir):
    import folder_paths
    target = os.path.join(folder_paths.get_input_directory(), "my_dog")
    os.makedirs(target, exist_ok=True)
    Image.open(photo_dir / "b.jpg").save(os.path.join(target, "b.jpg"))
    photos, _, _ = h.run_node(node(pack), "my_dog", 64).result
    assert [tuple(p.shape) for p in photos] == [(1, 80, 50, 3)]


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


# ------------------------------------------------------------------ per-photo captions

TRAIN = dict(word="dog", output_name="captioned", steps=2, learning_rate=0.05, batch_size=2, gradient_accumulation=1,
             resolution=64, seed=3, templates="a photo of a {}", flip=False, save_every=0, resume=False,
             variant="value", precision="fp32", gradient_checkpointing=False, sample_every=0)


def train(pack, model, clip, vae, photos, captions, **overrides):
    node = h.train_node(pack, "5")
    return h.run_node(node, model, clip, vae=vae, photos=photos, captions=captions, **{**TRAIN, **overrides}).result


def test_captions_are_read_beside_their_photos(pack, photo_dir):
    (photo_dir / "a.txt").write_text("a {} on a red\n  sofa\n")
    _, _, captions = h.run_node(node(pack), str(photo_dir), 64).result
    assert captions.entries == (("a.txt", "a {} on a red sofa"), None)  # b.jpg has none: templates
    before = node(pack).fingerprint_inputs(str(photo_dir), 64)
    (photo_dir / "b.txt").write_text("my dog")
    assert node(pack).fingerprint_inputs(str(photo_dir), 64) != before  # a caption edit re-runs the node
    (photo_dir / "b.txt").write_text("   ")
    with pytest.raises(ValueError, match="the caption b.txt is empty"):
        h.run_node(node(pack), str(photo_dir), 64)
    (photo_dir / "b.txt").write_bytes(b"\xff\xfe\xfa not utf-8")
    with pytest.raises(ValueError, match="cannot read the caption b.txt"):
        h.run_node(node(pack), str(photo_dir), 64)


def test_training_with_captions_names_a_caption_without_the_word(pack, sd15, vae, photo_dir):
    model, clip = sd15
    (photo_dir / "a.txt").write_text("a {} on a red sofa")
    (photo_dir / "b.txt").write_text("two dogs on the grass")  # "dogs" is another word
    photos, _, captions = h.run_node(node(pack), str(photo_dir), 64).result
    with pytest.raises(ValueError, match="the caption b.txt 'two dogs on the grass' does not contain the class "
                                         "word 'dog'.*add the word"):
        train(pack, model, clip, vae, photos, captions)


def test_captions_change_the_concept_and_are_part_of_its_hash_and_resume_check(pack, sd15, vae, photo_dir):
    model, clip = sd15
    photos, _, _ = h.run_node(node(pack), str(photo_dir), 64).result
    plain = train(pack, model, clip, vae, photos, None)[0]
    (photo_dir / "a.txt").write_text("a {} on a red sofa")
    _, _, captions = h.run_node(node(pack), str(photo_dir), 64).result
    captioned = train(pack, model, clip, vae, photos, captions, save_every=1)[0]
    assert captioned.metadata["training"]["captions"] is True
    assert captioned.metadata["training"]["photos_sha256"] != plain.metadata["training"]["photos_sha256"]
    assert any(not torch.equal(plain.values[l], captioned.values[l]) for l in plain.values)
    (photo_dir / "a.txt").write_text("a {} on a blue sofa")
    _, _, edited = h.run_node(node(pack), str(photo_dir), 64).result
    resume = h.pack_submodule(pack, "infusion.training.state").ResumeError
    with pytest.raises(resume, match="photos_sha256"):
        train(pack, model, clip, vae, photos, edited, steps=3, resume=True)
