"""Caption templates, photo crops, mask weights, the photo hash and the prediction-space loss."""
import pytest
import torch

from infusion.training.buckets import CENTRE_CROP, bucket_sizes, cover_size, place
from infusion.training.data import fit_masks, fit_photos, flip, loss_weights, photo_hash, photo_list
from infusion.training.objective import diffusion_loss, prediction_error
from infusion.training.templates import AUTHOR_TEMPLATES, fill, parse_templates


def test_the_authors_eleven_templates_round_trip_through_the_text_box():
    assert len(AUTHOR_TEMPLATES) == 11 and all("{}" in t for t in AUTHOR_TEMPLATES)
    assert parse_templates("\n".join(AUTHOR_TEMPLATES)) == list(AUTHOR_TEMPLATES)
    assert parse_templates("  a {} on {a} table \n\n{}\n") == ["a {} on {a} table", "{}"]
    assert fill("a {} on {a} table", "dog") == "a dog on {a} table"


@pytest.mark.parametrize("text, match", [("", "no caption templates"), ("a photo of a dog", "has no")])
def test_bad_templates_are_refused_clearly(text, match):
    with pytest.raises(ValueError, match=match):
        parse_templates(text)


def test_photos_keep_their_aspect_and_are_centre_cropped():
    assert cover_size(300, 600, (64, 64)) == (64, 128) and cover_size(600, 300, (64, 64)) == (128, 64)
    wide = torch.zeros(1, 60, 120, 3)
    wide[:, :, 30:90] = 1.0  # a bright centre square
    out = fit_photos(wide, (32, 32))
    assert out.shape == (1, 32, 32, 3) and out.mean() > 0.99  # only the bicubic edge bleeds in
    assert torch.allclose(out[:, :, 2:-2], torch.ones(1, 32, 28, 3), atol=1e-3)
    rgba = torch.rand(2, 64, 64, 4)
    assert torch.equal(fit_photos(rgba, (64, 64)), rgba[..., :3])  # right size: untouched, alpha dropped


def test_masks_follow_their_photos_and_become_normalised_latent_weights():
    photos = torch.rand(2, 80, 64, 3)
    masks = torch.zeros(2, 80, 64)
    masks[0, 8:72, :32] = 0.5
    masks[1] = 1.0
    fitted = fit_masks(masks, photos, (64, 64))
    assert fitted.shape == (2, 64, 64)
    w = loss_weights(fitted, (8, 8))
    assert w.shape == (2, 1, 8, 8) and torch.allclose(w.amax(dim=(1, 2, 3)), torch.ones(2))
    assert torch.equal(w[0, 0, :, 4:], torch.zeros(8, 4)) and torch.equal(w[1], torch.ones(1, 8, 8))
    assert torch.equal(flip(flip(photos)), photos) and torch.equal(flip(masks)[:, :, 0], masks[:, :, -1])
    with pytest.raises(ValueError, match="one mask per photo"):
        fit_masks(masks[:1], photos, (64, 64))
    with pytest.raises(ValueError, match="same size"):
        fit_masks(masks[:, :64], photos, (64, 64))
    with pytest.raises(ValueError, match="photo 2 is empty"):
        loss_weights(torch.stack([fitted[0], torch.zeros(64, 64)]), (8, 8))


@pytest.mark.parametrize("resolution", [256, 512, 768, 1024])
def test_buckets_are_multiples_of_64_about_the_resolutions_area_from_1_to_4_to_4_to_1(resolution):
    sizes = bucket_sizes(resolution)
    assert (resolution, resolution) in sizes and len(set(sizes)) == len(sizes)
    for h, w in sizes:
        assert h % 64 == 0 and w % 64 == 0 and 0.25 <= w / h <= 4
        assert abs(h * w / resolution ** 2 - 1) <= 0.1
    aspects = [w / h for h, w in sizes]
    assert min(aspects) == 0.25 and max(aspects) == 4 and aspects == sorted(aspects)
    assert sizes == [(w, h) for h, w in reversed(sizes)] or sorted(sizes) == sorted((w, h) for h, w in sizes)


def test_each_photo_goes_to_the_bucket_nearest_its_aspect_and_is_cropped_least():
    assert place(300, 500, 256).size == (192, 320) and place(500, 300, 256).size == (320, 192)
    assert place(640, 640, 256).size == (256, 256) and place(400, 1600, 256).size == (128, 512)
    assert place(300, 500, 256, CENTRE_CROP).size == (256, 256)
    # a photo of the bucket's own aspect loses nothing: scaled, not cropped
    portrait = torch.zeros(1, 500, 300, 3)
    portrait[:, :, :, 1] = torch.linspace(0, 1, 500)[:, None]  # a vertical ramp: a crop would shorten it
    out = fit_photos(portrait, place(500, 300, 256).size)
    assert out.shape == (1, 320, 192, 3)
    assert out[0, 0, 0, 1] < 0.01 and out[0, -1, 0, 1] > 0.99
    with pytest.raises(ValueError, match="crop must be one of"):
        place(10, 10, 256, "stretch")


def test_extreme_and_small_photos_are_placed_with_a_note():
    extreme = place(100, 1000, 256)
    assert extreme.size == (128, 512) and "beyond 4:1" in extreme.note and "upscaled" in extreme.note
    assert place(1000, 1000, 256).note == "" and "upscaled" in place(100, 100, 256).note


def test_photo_lists_take_batches_lists_and_single_photos():
    a, b = torch.rand(2, 8, 6, 3), torch.rand(1, 4, 4, 3)
    photos = photo_list([a, b, torch.rand(5, 5, 3)])
    assert [tuple(p.shape) for p in photos] == [(8, 6, 3), (8, 6, 3), (4, 4, 3), (5, 5, 3)]
    assert torch.equal(photos[1], a[1]) and len(photo_list(a)) == 2
    assert [tuple(m.shape) for m in photo_list([torch.ones(2, 3, 3), torch.ones(4, 4)], "masks")] == [
        (3, 3), (3, 3), (4, 4)]
    with pytest.raises(ValueError, match="give RGB photos"):
        photo_list(torch.rand(1, 4, 4, 1))
    with pytest.raises(ValueError, match="IMAGE"):
        photo_list(["photo.png"])


def test_photo_hash_changes_with_any_pixel_or_mask():
    photos = torch.rand(3, 8, 8, 3, generator=torch.Generator().manual_seed(0))
    h = photo_hash(photos)
    assert h == photo_hash(photos.clone()) and len(h) == 64
    changed = photos.clone()
    changed[2, 7, 7, 2] += 1e-6
    assert photo_hash(changed) != h
    assert photo_hash(photos, torch.ones(3, 8, 8)) not in (h, photo_hash(photos, torch.zeros(3, 8, 8)))


def test_loss_is_the_eps_error_for_eps_models_and_the_v_error_for_v_models():
    g = torch.Generator().manual_seed(0)
    x0, eps, eps_pred = (torch.randn(3, 4, 2, 2, generator=g) for _ in range(3))
    sigma = torch.tensor([0.1, 1.0, 10.0])
    s = sigma.view(-1, 1, 1, 1)
    x = x0 + s * eps
    # eps model (ComfyUI EPS): denoised = x - sigma * eps_pred; b(sigma) = -sigma
    denoised = x - s * eps_pred
    torch.testing.assert_close(prediction_error(denoised, x0, -sigma), eps_pred - eps)
    # v model (ComfyUI V_PREDICTION, sigma_data 1): denoised = x / (s^2+1) - v_pred * s / sqrt(s^2+1)
    alpha, sig = 1 / (1 + s ** 2) ** 0.5, s / (1 + s ** 2) ** 0.5
    v_true = alpha * eps - sig * x0  # v = alpha_t eps - sigma_t x0 in DDPM terms
    v_pred = v_true + torch.randn(3, 4, 2, 2, generator=g)
    denoised = x / (s ** 2 + 1) - v_pred * s / (s ** 2 + 1) ** 0.5
    torch.testing.assert_close(prediction_error(denoised, x0, -sigma / (sigma ** 2 + 1) ** 0.5), v_pred - v_true)
    torch.testing.assert_close(diffusion_loss(x - s * eps_pred, x0, -sigma), (eps_pred - eps).square().mean())


def test_mask_weights_multiply_prediction_and_target_alike():
    g = torch.Generator().manual_seed(1)
    denoised, x0 = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    w = torch.rand(2, 1, 3, 3, generator=g)
    scale = torch.tensor([-0.5, -2.0])
    err = prediction_error(denoised, x0, scale)
    torch.testing.assert_close(diffusion_loss(denoised, x0, scale, w), (w * err).square().mean())
    assert diffusion_loss(denoised, x0, scale, torch.zeros_like(w)) == 0
    assert torch.equal(diffusion_loss(denoised, x0, scale, torch.ones_like(w)), diffusion_loss(denoised, x0, scale))
