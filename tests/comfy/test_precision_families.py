"""The default precision (`auto`) on every tiny family picks what ComfyUI's own trainer picks with
training_dtype "none" (comfy_extras/nodes_train.py: fp16 for an fp16 model, bf16 for any other), on a simulated
GPU with bf16 (on the CPU, fp32: test_train_node.py). fp16 asked for on a family ComfyUI never runs in fp16 is
refused by the node, naming the family, before anything is encoded."""
import pytest
import torch

from infusion_dev import comfy_harness as h

UNETS = ("sd15", "sd2v", "sdxl")


def comfyuis_choice(model_dtype: torch.dtype) -> str:
    return "fp16" if model_dtype == torch.float16 else "bf16"


def family_model(request, family):
    return request.getfixturevalue(family)[0] if family in UNETS else h.tiny_dit(family)[0].clone()


@pytest.mark.parametrize("family", UNETS + tuple(h.dit_families()))
def test_auto_on_a_gpu_picks_what_comfyuis_trainer_picks(request, pack, family, monkeypatch):
    import comfy.model_management
    precision = h.pack_submodule(pack, "infusion.training.precision")
    families = h.pack_submodule(pack, "infusion.families")
    model = family_model(request, family)
    name = families.model_family(model)
    monkeypatch.setattr(model, "load_device", torch.device("cuda"))
    monkeypatch.setattr(comfy.model_management, "should_use_bf16", lambda *a, **k: True)
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        monkeypatch.setattr(model, "model_dtype", lambda dtype=dtype: dtype)
        assert precision.model_precision(model, "auto", name) == comfyuis_choice(dtype), (family, dtype)
    supported = model.model.model_config.supported_inference_dtypes
    if torch.float16 in supported:
        assert precision.model_precision(model, "fp16", name) == "fp16"
    else:
        with pytest.raises(ValueError, match=f"fp16 cannot train a {name} model"):
            precision.model_precision(model, "fp16", name)


def test_fp16_on_qwen_image_is_refused_before_anything_is_encoded(pack, monkeypatch):
    from test_dit import photo_latents
    if "qwen_image" not in h.dit_families():
        pytest.skip("this ComfyUI has no Qwen-Image")
    model, clip = h.tiny_dit("qwen_image")
    encoded = []
    monkeypatch.setattr(type(clip), "encode_from_tokens_scheduled",
                        lambda self, *a, **k: encoded.append(1) or pytest.fail("encoded before the refusal"))
    with pytest.raises(ValueError, match="fp16 cannot train a QwenImage model: ComfyUI runs QwenImage only in "
                                         "bf16 or fp32"):
        h.run_node(h.train_node(pack), model.clone(), clip, latents=photo_latents(family="qwen_image"), word="dog",
                   output_name="qwen_fp16", steps=1, batch_size=2, precision="fp16", sample_every=0)
    assert not encoded


def test_auto_reads_its_own_patchers_cast_dtype_not_another_clones(pack, monkeypatch):
    """The clones of one model share it; the last loaded writes its own cast dtype onto it (a training at fp32
    sets one). Auto must read the patcher it was given: an fp16 model stays fp16 after an fp32 clone ran."""
    import comfy.model_management
    precision = h.pack_submodule(pack, "infusion.training.precision")
    model = h.tiny_dit("qwen_image")[0].clone()
    fp32_clone = model.clone()
    fp32_clone.set_model_compute_dtype(torch.float32)
    comfy.model_management.load_models_gpu([fp32_clone], force_full_load=True)
    assert model.model.manual_cast_dtype == torch.float32  # the other clone's, left on the shared model
    monkeypatch.setattr(model, "load_device", torch.device("cuda"))
    monkeypatch.setattr(comfy.model_management, "should_use_bf16", lambda *a, **k: True)
    monkeypatch.setattr(model, "model_dtype", lambda: torch.float16)
    assert precision.model_precision(model, "auto", "QwenImage") == "fp16"
