"""Aspect-ratio buckets through Train Infusion Concept, on the tiny SD1.5 and FLUX.1 layouts: photos of three
aspects whose subject touches an edge keep the whole subject with buckets (centre crop cuts it), train at
their buckets' sizes, give the same concept for the same seed, and resume bit for bit."""
import os

import pytest
import torch

from infusion_dev import comfy_harness as h
from infusion_dev import tiny_dits

RESOLUTION = 256
# (height, width) of each photo, and its subject's rows and columns: each touches one edge of its photo.
PHOTOS = [((400, 240), (slice(0, 160), slice(60, 180))),     # portrait 3:5, subject at the top
          ((240, 400), (slice(60, 180), slice(0, 160))),     # landscape 5:3, subject at the left
          ((300, 300), (slice(100, 300), slice(100, 200)))]  # square, subject at the bottom
BUCKETS = [[320, 192], [192, 320], [256, 256]]  # (height, width) each trains at, at 256
# Training runs at 128 px on photos of 1:4, 4:1 and 1:1, each its own bucket there (a quarter of the pixels).
TRAIN_RESOLUTION, TRAIN_SHAPES = 128, [(400, 100), (100, 400), (200, 200)]
TRAIN_BUCKETS = [[256, 64], [64, 256], [128, 128]]
TRAIN = dict(word="dog", learning_rate=0.05, batch_size=2, gradient_accumulation=1, resolution=TRAIN_RESOLUTION,
             seed=4,
             templates="a photo of a {}", flip=True, save_every=0, resume=False, variant="value", precision="fp32",
             gradient_checkpointing=False, sample_every=0)


def edge_photos(shapes=None):
    """IMAGE and MASK lists as Load Concept Photos gives them: a textured photo with a bright subject (at an
    edge, or for `shapes` (height, width), in the middle)."""
    g = torch.Generator().manual_seed(0)
    photos, masks = [], []
    middle = lambda h, w: (slice(h // 4, 3 * h // 4), slice(w // 4, 3 * w // 4))  # noqa: E731
    for (height, width), (rows, cols) in PHOTOS if shapes is None else [(s, middle(*s)) for s in shapes]:
        photo = torch.rand(1, height, width, 3, generator=g) * 0.3
        mask = torch.zeros(1, height, width)
        mask[0, rows, cols] = 1.0
        photo[0, rows, cols] = torch.tensor([0.9, 0.7, 0.2])
        photos.append(photo)
        masks.append(mask)
    return photos, masks


@pytest.fixture(params=["sd15", "flux"])
def family(request, comfy_path):
    if request.param == "sd15":
        model, clip = h.tiny_sd15()
        return request.param, model.clone(), clip.clone(), h.tiny_vae()
    model, clip = h.tiny_dit("flux")
    return request.param, model.clone(), clip.clone(), tiny_dits.flux_vae()


def subject_kept(pack, model, vae, crop):
    """For each photo, the share of its subject (mask sum) that training sees: the loss weights on the latent
    grid, brought back to the photo's own pixels."""
    encoding = h.pack_submodule(pack, "infusion.training.encoding")
    photos, masks = edge_photos()
    data = encoding.ConceptData(photos=photos, vae=vae, masks=masks, crop=crop)
    placements = data.placements(RESOLUTION)
    with h.executor_mode():  # the VAE encodes as in the executor
        buckets = data.encode(model, placements, mirrored=False)
    kept = [0.0] * len(photos)
    for bucket, members in zip(buckets.buckets, buckets.members):
        for row, i in enumerate(members):
            (height, width), size = PHOTOS[i][0], placements[i].size
            scale = max(size[0] / height, size[1] / width)  # cover: the photo's pixels per training pixel
            pixels = bucket.weights[row].sum() * 64  # a latent pixel is 8 x 8 training pixels
            kept[i] = float(pixels / scale ** 2 / masks[i].sum())
    return [list(p.size) for p in placements], kept


def test_buckets_keep_a_subject_at_the_edge_where_centre_crop_cuts_it(pack, family):
    name, model, _, vae = family
    sizes, kept = subject_kept(pack, model, vae, "buckets")
    assert sizes == BUCKETS
    assert all(abs(k - 1) < 0.01 for k in kept), kept  # the whole subject, to within 1 %
    sizes, kept = subject_kept(pack, model, vae, "centre crop")
    assert sizes == [[RESOLUTION, RESOLUTION]] * 3
    assert kept[0] < 0.6 and kept[1] < 0.6, kept  # half of the portrait's top, the landscape's left are cut
    assert abs(kept[2] - 1) < 0.01  # a square photo is the same either way


def train(pack, model, clip, vae, name, photos=None, **overrides):
    """Train Infusion Concept on `photos` (default: photos of TRAIN_SHAPES with their masks)."""
    photos, masks = (photos, None) if photos is not None else edge_photos(TRAIN_SHAPES)
    return h.run_node(h.train_node(pack), model, clip, vae=vae, photos=photos, masks=masks, output_name=name,
                      **{**TRAIN, "steps": 2, **overrides}).result


def test_bucketed_photos_train_at_their_sizes_and_the_same_seed_gives_the_same_concept(pack, family,
                                                                                        tmp_models_dir):
    name, model, clip, vae = family
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    concept, loss, _, path, _ = train(pack, model, clip, vae, f"buckets_{name}")
    training = concept.metadata["training"]
    assert training["sizes"] == TRAIN_BUCKETS and training["crop"] == "buckets"
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in concept.values.values())
    again = train(pack, model, clip, vae, f"buckets_{name}_again")[0]
    assert all(torch.equal(concept.values[k], again.values[k]) for k in concept.values)
    cropped = train(pack, model, clip, vae, f"cropped_{name}", crop="centre crop")[0]
    assert cropped.metadata["training"]["sizes"] == [[TRAIN_RESOLUTION, TRAIN_RESOLUTION]] * 3
    assert any(not torch.equal(concept.values[k], cropped.values[k]) for k in concept.values)
    after = model.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_bucketed_run_stopped_and_resumed_equals_the_uninterrupted_run(pack, comfy_path, tmp_models_dir,
                                                                          monkeypatch):
    import comfy.model_management
    import comfy.utils
    model, clip = h.tiny_sd15()
    vae = h.tiny_vae()

    def stop_at_two(value, total, preview, node_id=None, prompt_id=None):
        if value == 2:
            comfy.model_management.interrupt_current_processing(True)

    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", stop_at_two)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        train(pack, model.clone(), clip.clone(), vae, "bucket_stop", steps=4)
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", None)
    state = h.pack_submodule(pack, "infusion.training.state").load_state(
        os.path.join(tmp_models_dir, "infusion", "bucket_stop.resume"))
    assert state.step == 2 and len(state.order) == 3  # a photo order per bucket
    resumed = train(pack, model.clone(), clip.clone(), vae, "bucket_stop", steps=4, resume=True)
    full = train(pack, model.clone(), clip.clone(), vae, "bucket_full", steps=4)
    assert resumed[1]["loss"] == full[1]["loss"]
    assert all(torch.equal(resumed[0].values[k], full[0].values[k]) for k in full[0].values)


def test_another_bucket_assignment_is_refused_on_resume(pack, comfy_path, tmp_models_dir):
    model, clip = h.tiny_sd15()
    vae = h.tiny_vae()
    train(pack, model.clone(), clip.clone(), vae, "bucket_other")
    resume = h.pack_submodule(pack, "infusion.training.state").ResumeError
    with pytest.raises(resume, match="sizes: saved"):
        train(pack, model.clone(), clip.clone(), vae, "bucket_other", steps=3, resume=True, crop="centre crop")


def test_sdxl_is_conditioned_on_each_photos_own_size_and_crop(pack, sdxl, vae):
    """SDXL's size conditioning (original size, crop's top-left, target size) carries each photo's real values,
    as kohya's SDXL training gives them: every model call's size vector is one of the photos'."""
    model, clip = sdxl
    seen = []

    def record(apply_model, args):
        seen.append(args["c"]["y"][:, -6 * 256:].clone())  # the six size embeddings after the pooled text
        return apply_model(args["input"], args["timestep"], **args["c"])

    model.set_model_unet_function_wrapper(record)
    photos, masks = edge_photos()
    photos[0] = torch.cat([photos[0], photos[0][:, :10]], dim=1)  # 410 x 240: its bucket crops 4 rows at the top
    h.run_node(h.train_node(pack), model, clip, vae=vae, photos=photos, output_name="sdxl_sizes",
               **{**TRAIN, "resolution": RESOLUTION, "steps": 6, "batch_size": 1, "flip": False})

    def embedded(*values):
        return torch.cat([model.model.embedder(torch.Tensor([v])) for v in values]).flatten()

    expected = [embedded(410, 240, 4, 0, 320, 192), embedded(240, 400, 0, 0, 192, 320),
                embedded(300, 300, 0, 0, 256, 256)]  # (height, width, crop top, crop left, target h, target w)
    drawn = {next(i for i, e in enumerate(expected) if torch.allclose(row, e)) for y in seen for row in y}
    assert drawn == {0, 1, 2}


def test_small_and_extreme_photos_are_named_in_the_log_and_the_concepts_report(pack, comfy_path, tmp_models_dir,
                                                                                 caplog):
    model, clip = h.tiny_sd15()
    photos, _ = edge_photos()
    photos[1] = photos[1][:, :40]  # 40 x 400: 10:1, beyond 4:1
    photos[2] = photos[2][:, :100, :100]  # 100 x 100: smaller than its 256 x 256
    concept = train(pack, model.clone(), clip.clone(), h.tiny_vae(), "bucket_notes", photos, steps=1,
                    resolution=RESOLUTION)[0]
    notes = concept.metadata["training"]["photo_notes"]
    assert len(notes) == 2
    assert notes[0].startswith("photo 2 (400 x 40) trains at 512 x 128: its aspect 10.0:1 is beyond 4:1")
    assert notes[1] == "photo 3 (100 x 100) trains at 256 x 256: it is smaller than its training size and is upscaled"
    assert all(note in caplog.text for note in notes)
    report = h.pack_submodule(pack, "infusion.concept_tools").report(concept, {}, False)
    assert all(f"note: {note}" in report for note in notes)


def test_latents_of_any_size_train_each_at_its_own_and_another_vaes_are_refused(pack, family, tmp_models_dir):
    """No latent size needs refusing: ComfyUI pads a DiT's latent to its patch size, and a UNet's upsampling
    follows its skip connections' sizes. What a model cannot take is another VAE's latents (their channels)."""
    name, model, clip, _ = family
    channels = model.model.latent_format.latent_channels
    odd = [{"samples": torch.randn(1, channels, 9, 7)}, {"samples": torch.randn(2, channels, 8, 8)}]
    concept = h.run_node(h.train_node(pack), model, clip, latents=odd, output_name=f"odd_{name}",
                         **{**TRAIN, "steps": 2}).result[0]
    assert concept.metadata["training"]["sizes"] == [[9, 7], [8, 8], [8, 8]]
    assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in concept.values.values())
    other = [odd[1], {"samples": torch.zeros(1, channels + 1, 8, 8)}]
    with pytest.raises(ValueError, match=f"latent 3 has {channels + 1} channels, but this model's latents have "
                                         f"{channels}"):
        h.run_node(h.train_node(pack), model, clip, latents=other, output_name=f"odd_{name}",
                   **{**TRAIN, "steps": 1})
