"""The harness itself: tiny models have the real cross-attention layouts as ComfyUI reports
them at run time, run through ComfyUI's own nodes, and the pack loads like ComfyUI loads it."""
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from infusion_dev import comfy_harness as h


def sd_layout(input_ids, output_ids, depth=lambda block, n: 1, middle=1):
    """Expected (block, id, block_index) triples in UNet call order."""
    out = [("input", n, i) for n in input_ids for i in range(depth("input", n))]
    out += [("middle", 0, i) for i in range(middle)]
    out += [("output", n, i) for n in output_ids for i in range(depth("output", n))]
    return out


SD1_LAYOUT = sd_layout([1, 2, 4, 5, 7, 8], range(3, 12))
SDXL_DEPTH = {("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10,
              **{("output", n): 10 for n in (0, 1, 2)}, **{("output", n): 2 for n in (3, 4, 5)}}
SDXL_LAYOUT = sd_layout([4, 5, 7, 8], range(6), depth=lambda b, n: SDXL_DEPTH[(b, n)], middle=10)
FAMILIES = [  # fixture, layout, context width, pooled width
    ("sd15", SD1_LAYOUT, 768, 768),
    ("sd2v", SD1_LAYOUT, 1024, 1024),
    ("sdxl", SDXL_LAYOUT, 2048, 1280),
]


@pytest.mark.parametrize("family, layout, width, pooled", FAMILIES)
def test_cross_attention_layout_as_comfy_reports_it(request, family, layout, width, pooled):
    model, clip = request.getfixturevalue(family)
    pos, neg = h.encode(clip, "a photo of a dog"), h.encode(clip, "")
    seen = h.record_attn2_blocks(model, pos, neg)
    assert len(layout) == (70 if family == "sdxl" else 16)
    assert seen == layout


@pytest.mark.parametrize("family, layout, width, pooled", FAMILIES)
def test_clip_text_encode_widths_and_prompt_dependence(request, family, layout, width, pooled):
    _, clip = request.getfixturevalue(family)
    [[cond, extra]] = h.encode(clip, "a photo of a dog")
    [[cond_cat, _]] = h.encode(clip, "a photo of a cat")
    assert cond.shape == (1, 77, width) and extra["pooled_output"].shape == (1, pooled)
    assert torch.isfinite(cond).all() and torch.isfinite(extra["pooled_output"]).all()
    assert not torch.equal(cond, cond_cat)
    [[long, _]] = h.encode(clip, "dog " * 100)  # > 75 tokens: ComfyUI concatenates 77-token chunks
    assert long.shape == (1, 154, width)


@pytest.mark.parametrize("family", ["sd15", "sd2v", "sdxl"])
def test_ksampler_and_vae_decode_are_finite(request, family, vae):
    model, clip = request.getfixturevalue(family)
    latent = h.sample(model, h.encode(clip, "a dog"), h.encode(clip, "blurry"), h.empty_latent(batch=2), steps=2)
    samples = latent["samples"]
    assert samples.shape == (2, 4, h.LATENT_SIZE, h.LATENT_SIZE) and torch.isfinite(samples).all()
    assert not torch.equal(samples[0], samples[1])  # per-batch noise
    image = h.decode(vae, latent)
    assert image.shape == (2, h.IMAGE_SIZE, h.IMAGE_SIZE, 3) and torch.isfinite(image).all()


def test_sampling_is_deterministic(sd15):
    model, clip = sd15
    pos, neg = h.encode(clip, "a dog"), h.encode(clip, "")
    assert torch.equal(h.sample(model, pos, neg, seed=3)["samples"], h.sample(model, pos, neg, seed=3)["samples"])
    assert not torch.equal(h.sample(model, pos, neg, seed=3)["samples"], h.sample(model, pos, neg, seed=4)["samples"])


def test_model_types_and_configs(sd15, sd2v, sdxl):
    import comfy.model_base
    import comfy.supported_models as sm
    eps, v = comfy.model_base.ModelType.EPS, comfy.model_base.ModelType.V_PREDICTION
    assert type(sd15[0].model.model_config) is sm.SD15 and sd15[0].model.model_type == eps
    assert type(sd2v[0].model.model_config) is sm.SD20 and sd2v[0].model.model_type == v
    assert type(sdxl[0].model.model_config) is sm.SDXL and sdxl[0].model.model_type == eps
    assert isinstance(sdxl[0].model, comfy.model_base.SDXL) and sdxl[0].model.adm_channels == 2816
    for model, _ in (sd15, sd2v, sdxl):
        # Built as a ComfyUI loader builds them inside the executor: weights are inference tensors.
        # (Outside inference mode even torch.isfinite(weight) raises for them: detach first.)
        assert all(p.is_inference() and torch.isfinite(p.detach()).all() for p in model.model.parameters())


def test_vae_roundtrip_shapes(vae):
    image = torch.rand(1, h.IMAGE_SIZE, h.IMAGE_SIZE, 3, generator=torch.Generator().manual_seed(0))
    latent = h.vae_encode(vae, image)
    assert latent["samples"].shape == (1, 4, h.LATENT_SIZE, h.LATENT_SIZE)
    assert torch.isfinite(latent["samples"]).all()
    out = h.decode(vae, latent)
    assert out.shape == image.shape and torch.isfinite(out).all()


def test_checkpoint_is_detected_as_sd15_and_loads_completely(sd15_checkpoint, tmp_models_dir):
    import comfy.sd
    import comfy.supported_models
    import nodes
    assert sd15_checkpoint.startswith(tmp_models_dir)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logging.getLogger().addHandler(handler)
    try:
        with h.executor_mode():
            model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(sd15_checkpoint)
    finally:
        logging.getLogger().removeHandler(handler)
    assert type(model.model.model_config) is comfy.supported_models.SD15
    missing = [r.getMessage()[:200] for r in records if "missing" in r.getMessage().lower()]
    assert missing == []  # every UNet/CLIP/VAE weight came from the file, none left torch.empty
    # ...and the way a workflow loads it, by name from the (temporary) checkpoints folder.
    model, clip, vae = h.run_node(nodes.CheckpointLoaderSimple().load_checkpoint, h.CHECKPOINT_NAME)
    pos, neg = h.encode(clip, "a dog"), h.encode(clip, "")
    assert pos[0][0].shape == (1, 77, 768) and torch.isfinite(pos[0][0]).all()
    assert h.record_attn2_blocks(model, pos, neg) == [("input", 1, 0)]
    latent = h.sample(model, pos, neg)
    assert torch.isfinite(latent["samples"]).all()
    image = h.decode(vae, latent)
    assert image.shape == (1, h.IMAGE_SIZE, h.IMAGE_SIZE, 3) and torch.isfinite(image).all()


def test_comfy_folders_are_temporary(comfy_path, tmp_models_dir):
    import folder_paths
    for d in (tmp_models_dir, folder_paths.get_output_directory(), folder_paths.get_input_directory(),
              folder_paths.get_temp_directory(), folder_paths.get_user_directory()):
        assert d.startswith(h.base_dir()) and not d.startswith(comfy_path)
    assert all(p.startswith(h.base_dir()) for p in folder_paths.get_folder_paths("checkpoints"))


def test_find_comfyui_in_custom_nodes(tmp_path, monkeypatch, comfy_path):
    root = tmp_path / "ComfyUI"
    (root / "comfy").mkdir(parents=True)
    (root / "nodes.py").write_text("")
    pack_dir = root / "custom_nodes" / "ComfyUI-Infusion"
    pack_dir.mkdir(parents=True)
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    assert h.find_comfyui(str(pack_dir)) == str(root)
    assert h.find_comfyui(str(tmp_path / "elsewhere")) is None
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path / "nope"))
    assert h.find_comfyui(str(pack_dir)) is None and "nope" in h.absent_reason()
    monkeypatch.setenv("COMFYUI_PATH", comfy_path)
    assert h.find_comfyui(str(tmp_path / "elsewhere")) == comfy_path


def _write_pack(path, body):
    path.mkdir()
    (path / "__init__.py").write_text(textwrap.dedent(body))
    return str(path)


def test_load_pack_registers_v3_nodes_like_comfyui(tmp_path, comfy_path):
    import nodes
    pack_path = _write_pack(tmp_path / "probe.pack", """
        from comfy_api.latest import ComfyExtension, io

        class HarnessProbeNode(io.ComfyNode):
            @classmethod
            def define_schema(cls):
                return io.Schema(node_id="HarnessProbeNode", inputs=[io.Int.Input("x")], outputs=[io.Int.Output()])

            @classmethod
            def execute(cls, x):
                return io.NodeOutput(x + 1)

        class Ext(ComfyExtension):
            async def get_node_list(self):
                return [HarnessProbeNode]

        async def comfy_entrypoint():
            return Ext()
    """)
    try:
        module = h.load_pack(pack_path)
        assert module is sys.modules[pack_path.replace(".", "_x_")]  # ComfyUI's module naming
        node = nodes.NODE_CLASS_MAPPINGS["HarnessProbeNode"]
        assert h.run_node(node, 41).result == (42,)
    finally:
        nodes.NODE_CLASS_MAPPINGS.pop("HarnessProbeNode", None)


def test_load_pack_raises_the_logged_import_error(tmp_path, comfy_path):
    pack_path = _write_pack(tmp_path / "broken", "import module_that_does_not_exist_42\n")
    with pytest.raises(RuntimeError, match="module_that_does_not_exist_42"):
        h.load_pack(pack_path)


def test_this_pack_loads_through_comfyui(comfy_path):
    init = os.path.join(h.PACK_ROOT, "__init__.py")
    if not os.path.isfile(init) or "comfy_entrypoint" not in open(init).read():
        pytest.skip("the pack's __init__.py does not export comfy_entrypoint yet")
    import nodes
    module = h.load_pack()
    assert module.__name__ == h.pack_module_name() and callable(module.comfy_entrypoint)
    registered = [cls for cls in nodes.NODE_CLASS_MAPPINGS.values()
                  if getattr(cls, "__module__", "").startswith(module.__name__ + ".")]
    assert registered, "comfy_entrypoint registered no node"


def test_without_comfyui_the_folder_skips(tmp_path):
    """The core suite's absence case: no COMFYUI_PATH, pack not in custom_nodes -> skip,
    both in this venv and (if present) a plain Python without torch."""
    if os.path.basename(os.path.dirname(h.PACK_ROOT)) == "custom_nodes":
        pytest.skip("this pack sits in a ComfyUI/custom_nodes: ComfyUI is never absent here")
    pythons = [sys.executable]
    plain = shutil.which("python3")
    if plain and subprocess.run([plain, "-c", "import pytest"], capture_output=True).returncode == 0:
        pythons.append(plain)
    env = {k: v for k, v in os.environ.items() if k not in ("COMFYUI_PATH", "COMFYUI_REQUIRED", "PYTHONPATH")}
    for python in pythons:
        run = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", os.path.dirname(__file__)],
                             cwd=h.PACK_ROOT, env=env, capture_output=True, text=True, timeout=h.HANG)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "real ComfyUI not found: set COMFYUI_PATH" in run.stdout, run.stdout
        assert " skipped" in run.stdout and "passed" not in run.stdout and "error" not in run.stdout, run.stdout


def test_one_copy_of_the_core_per_process(pack):
    """ComfyUI imports the core as `<pack>.infusion`, tests and infusion_dev as `infusion`: one module, one class."""
    import importlib

    import infusion.concept
    for name in ("infusion", "infusion.concept", "infusion.residual", "infusion.training.session"):
        assert h.pack_submodule(pack, name) is importlib.import_module(name)
    nodes_load = h.pack_submodule(pack, "nodes.load")
    assert nodes_load.load_concept.__module__ == "infusion.format"
    assert h.pack_submodule(pack, "infusion.concept").InfusionConcept is infusion.concept.InfusionConcept
