"""The ComfyUI-version seams (infusion/compat.py, infusion_dev/comfy_versions.py and the pack's overrides of
ComfyUI methods).

The suite runs on the real 0.3.64 and 0.33.0, so each runs its own paths for real; the paths of the
other (and of 0.38, found by reading its code) run against stand-ins shaped as their objects are, so a
branch is never left untried.
"""
import asyncio
import inspect
from typing import NamedTuple

import pytest
import torch

from infusion_dev import comfy_harness as h
from infusion_dev import comfy_versions


@pytest.fixture
def compat(pack):
    return h.pack_submodule(pack, "infusion.compat")


def _passes_on_unknown_arguments(fn) -> bool:
    kinds = {p.kind for p in inspect.signature(fn).parameters.values()}
    return {inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD} <= kinds


def test_every_override_of_a_comfyui_method_accepts_unknown_arguments(pack):
    word_clip = h.pack_submodule(pack, "nodes.word_clip").InfusionCLIP
    overrides = [word_clip.clone, word_clip.encode_from_tokens, word_clip.encode_from_tokens_scheduled,
                 h.pack_submodule(pack, "infusion.sampler_context")._BodySampler.sample,
                 h.pack_submodule(pack, "infusion.word_carrier").carry_word_positions]
    assert [f.__qualname__ for f in overrides if not _passes_on_unknown_arguments(f)] == []


def test_clip_overrides_pass_new_arguments_on_to_comfyui(pack, sd15, monkeypatch):
    """As 0.38's CLIP.clone(disable_dynamic=...): what ComfyUI adds reaches ComfyUI."""
    import comfy.sd
    seen = {}
    original_clone, original_scheduled = comfy.sd.CLIP.clone, comfy.sd.CLIP.encode_from_tokens_scheduled

    def clone(self, disable_dynamic=False):
        seen["clone"] = disable_dynamic
        return original_clone(self)

    def scheduled(self, tokens, unprojected=False, add_dict={}, show_pbar=True, future_option=None):
        seen["scheduled"] = future_option
        return original_scheduled(self, tokens, unprojected, add_dict, show_pbar)

    monkeypatch.setattr(comfy.sd.CLIP, "clone", clone)
    monkeypatch.setattr(comfy.sd.CLIP, "encode_from_tokens_scheduled", scheduled)
    word_clip = h.pack_submodule(pack, "nodes.word_clip").InfusionCLIP.with_word(sd15[1], "dog")
    copy = word_clip.clone(disable_dynamic=True)
    assert seen["clone"] is True and type(copy) is type(word_clip) and copy.infusion_words == ("dog",)
    with h.executor_mode():
        out = copy.encode_from_tokens_scheduled(copy.tokenize("a dog"), future_option="x")
    assert seen["scheduled"] == "x" and out[0][1]["infusion_words"].words == {"dog": (2,)}


def test_the_runner_gets_the_classic_cache(compat):
    import execution
    executor = compat.prompt_executor(server=None)
    assert type(executor.caches.outputs).__name__ == "HierarchicalCache"  # CacheType.CLASSIC's cache
    assert execution.CacheType.CLASSIC.name == "CLASSIC"


class _CacheEntry(NamedTuple):  # 0.38's execution.CacheEntry
    ui: dict
    outputs: list


class _AsyncCache:  # 0.38: async get, CacheEntry values
    def __init__(self, values):
        self.values = values

    async def get(self, node_id):
        return self.values.get(node_id)


class _SyncCache(_AsyncCache):  # 0.3.64: plain get, the output slots themselves
    def get(self, node_id):
        return self.values.get(node_id)


@pytest.mark.parametrize("cache", [_SyncCache({"1": [["a"]], "2": [[3]]}),
                                   _AsyncCache({"1": _CacheEntry({"x": 1}, [["a"]]), "2": _CacheEntry({}, [[3]])})])
def test_cached_outputs_reads_both_cache_kinds(compat, cache):
    class Executor:
        caches = type("Caches", (), {"outputs": cache})
    assert asyncio.run(compat.cached_outputs(Executor, ["1", "2", "3"])) == {"1": [["a"]], "2": [[3]]}


def test_training_asks_for_classic_loading_of_a_dynamic_model(compat, sd15):
    model = sd15[0]
    assert compat.classic_patcher(model) is model  # 0.3.64 (and 0.38 on CPU): already classic

    class Dynamic:  # 0.38's ModelPatcherDynamic, as far as the pack uses it
        def __init__(self, delegate):
            self.delegate = delegate

        def is_dynamic(self):
            return True

        def get_non_dynamic_delegate(self):
            if self.delegate is None:
                raise RuntimeError("Cannot create non-dynamic delegate: cached_patcher_init is not initialized.")
            return self.delegate

    assert compat.classic_patcher(Dynamic(model)) is model
    with pytest.raises(RuntimeError, match="start ComfyUI with --disable-dynamic-vram"):
        compat.classic_patcher(Dynamic(None))


def test_training_mode_sets_the_switch_where_comfyui_has_one(compat, monkeypatch):
    import comfy.model_management as mm
    if not hasattr(mm, "in_training"):  # 0.3.64: no switch, nothing to do
        with compat.training_mode():
            assert not hasattr(mm, "in_training")
    monkeypatch.setattr(mm, "in_training", False, raising=False)  # 0.38
    with pytest.raises(KeyError):
        with compat.training_mode():
            assert mm.in_training is True
            raise KeyError("a failing step")
    assert mm.in_training is False


def as_dynamic(model, dynamic_class):
    """A clone that says it is dynamic and has ComfyUI's own get_non_dynamic_delegate (which reloads the
    model from its file through the loader that loaded it)."""
    dynamic = model.clone()
    dynamic.is_dynamic = lambda: True
    dynamic.non_dynamic_delegate_model = None
    dynamic.get_non_dynamic_delegate = dynamic_class.get_non_dynamic_delegate.__get__(dynamic)
    return dynamic


def test_a_dynamic_vram_model_trains_on_comfyuis_own_classic_delegate(pack, compat, sd15_checkpoint, vae):
    """0.33 on NVIDIA: main.py loads models as ModelPatcherDynamic. A CPU cannot build one (ComfyUI falls
    back to the classic patcher there), so a model loaded by ComfyUI's own checkpoint loader is marked
    dynamic and given ComfyUI's own get_non_dynamic_delegate, which reloads it from its file: the concept
    trained on that delegate (previews sampled on the user's model) is the one classic loading gives, and
    the user's MODEL is untouched."""
    import comfy.model_patcher
    import comfy.sd

    with h.executor_mode():
        model = comfy.sd.load_checkpoint_guess_config(sd15_checkpoint)[0]
    dynamic_class = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    if dynamic_class is None:  # 0.3.64: no dynamic VRAM, every model is classic
        assert compat.classic_patcher(model) is model
        return
    dynamic = as_dynamic(model, dynamic_class)
    delegate = compat.classic_patcher(dynamic)
    assert not delegate.is_dynamic() and delegate.model is not dynamic.model  # reloaded from the file

    _, clip = h.tiny_sd15()
    photos = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    settings = dict(word="dog", steps=2, learning_rate=0.05, batch_size=2, gradient_accumulation=1, resolution=64,
                    seed=0, templates="a photo of a {}", flip=False, save_every=0, resume=False, variant="value",
                    precision="fp32", gradient_checkpointing=True, sample_every=1, sample_steps=1, sample_size=64)
    before = {k: v.clone() for k, v in dynamic.model.state_dict().items()}
    trained = {}
    for name, user_model in (("dynamic", dynamic), ("classic", model)):
        trained[name] = h.run_node(h.train_node(pack), user_model, clip, vae=vae, photos=photos,
                                   output_name=f"delegate_{name}", **settings).result[0]
    dynamic_values, classic_values = trained["dynamic"].values, trained["classic"].values
    assert all(torch.equal(dynamic_values[layer], classic_values[layer]) for layer in classic_values)
    assert any(v.abs().sum() > 0 for v in trained["dynamic"].values.values())
    after = dynamic.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_a_dynamic_model_is_loaded_once_a_run_previews_on_its_delegate_and_lets_it_go(pack, compat, sd15_checkpoint,
                                                                                       vae, monkeypatch):
    """One classic copy per run: loaded from its file once, trained and previewed on (sampling the dynamic model
    between intervals swapped the two on the GPU at every preview), unloaded and let go after the run."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd

    dynamic_class = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    with h.executor_mode():
        model = comfy.sd.load_checkpoint_guess_config(sd15_checkpoint)[0]
    if dynamic_class is None:  # 0.3.64: no dynamic VRAM, a run trains and previews on the model itself
        with compat.classic_for_run(model) as classic:
            assert classic is model
        return
    dynamic = as_dynamic(model, dynamic_class)
    load, *rest = model.cached_patcher_init
    from_file = []

    def counted(*args, **kwargs):
        from_file.append(args)
        return load(*args, **kwargs)

    dynamic.cached_patcher_init = (counted, *rest)
    loaded = []
    load_models_gpu = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, *a, **k: loaded.extend(m.model for m in models)
                        or load_models_gpu(models, *a, **k))
    _, clip = h.tiny_sd15()
    photos = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(1))
    settings = dict(word="dog", steps=3, learning_rate=0.05, batch_size=2, gradient_accumulation=1, resolution=64,
                    seed=0, templates="a photo of a {}", flip=False, save_every=0, resume=False, variant="value",
                    precision="fp32", gradient_checkpointing=True, sample_every=1, sample_steps=1, sample_size=64,
                    sample_prompts="a photo of a {}")
    previews = h.run_node(h.train_node(pack), dynamic, clip, vae=vae, photos=photos, output_name="delegate_once",
                          **settings).result[4]
    assert previews.shape == (1, 64, 4 * 64, 3)  # steps 0 to 3
    assert len(from_file) == 1
    unets = {id(m) for m in loaded if hasattr(m, "diffusion_model")}
    assert len(unets) == 1 and id(dynamic.model) not in unets  # the delegate alone, for training and previews
    assert dynamic.non_dynamic_delegate_model is None
    assert not any(l.model is not None and id(l.model.model) in unets for l in mm.current_loaded_models)


def test_a_diffusion_model_file_loaded_dynamic_trains_on_its_delegate(pack, compat, tmp_path):
    """The same through ComfyUI's diffusion-model loader (UNETLoader's load_diffusion_model, which 0.33 detects
    the tiny FLUX.1 file with), the path of a user's Flux with separate text-encoder and VAE files."""
    import comfy.model_patcher
    import comfy.sd

    from infusion_dev import tiny_dits, tiny_models
    dynamic_class = getattr(comfy.model_patcher, "ModelPatcherDynamic", None)
    if dynamic_class is None:  # 0.3.64: no dynamic VRAM (and it detects only full-size Flux files)
        model = h.tiny_dit("flux")[0]
        assert compat.classic_patcher(model) is model
        return
    path = str(tmp_path / "flux.safetensors")
    with h.executor_mode():
        tiny_models.save_unet_file(tiny_models.init_weights(tiny_dits._flux(True), 3), path)
        model = comfy.sd.load_diffusion_model(path)
    assert type(model.model.model_config).__name__ == "Flux"
    dynamic = as_dynamic(model, dynamic_class)
    before = {k: v.clone() for k, v in dynamic.model.state_dict().items()}
    _, clip = h.tiny_dit("flux")
    latents = {"samples": torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(2))}
    settings = dict(word="dog", steps=2, learning_rate=0.05, batch_size=2, gradient_accumulation=1, seed=0,
                    templates="a photo of a {}", flip=False, save_every=0, resume=False, variant="value",
                    precision="fp32", gradient_checkpointing=True, sample_every=1, sample_steps=1,
                    sample_cfg=1.0, sample_size=64, sample_prompts="a photo of a {}")
    trained = [h.run_node(h.train_node(pack), m, clip, vae=tiny_dits.flux_vae(), latents=latents,
                          output_name=f"flux_delegate_{i}", **settings).result for i, m in enumerate((dynamic, model))]
    assert all(torch.equal(trained[0][0].values[l], trained[1][0].values[l]) for l in trained[1][0].values)
    previews = trained[0][4]  # steps 0 (the base model), 1 and 2, through ComfyUI's sampler and the VAE
    assert previews.shape == (1, 64, 192, 3) and not torch.equal(previews[:, :, :64], previews[:, :, 128:])
    after = dynamic.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


LORA_INPUTS = dict(batch_size=1, steps=1, grad_accumulation_steps=1, learning_rate=0.01, rank=1, optimizer="AdamW",
                   loss_function="MSE", seed=0, training_dtype="fp32", lora_dtype="fp32", algorithm="LoRA",
                   gradient_checkpointing=False, existing_lora="[None]")


def test_train_lora_runs_comfyuis_own_node_and_its_lora_applies(sd15):
    model, clip = sd15
    latents = {"samples": torch.randn(1, 4, h.LATENT_SIZE, h.LATENT_SIZE, generator=torch.Generator().manual_seed(0))}
    positive = h.encode(clip, "a photo of a dog")
    with h.executor_mode():
        lora = comfy_versions.train_lora(model, latents, positive, **LORA_INPUTS)
    assert lora and all(isinstance(v, torch.Tensor) for v in lora.values())
    negative = h.encode(clip, "")
    base = h.sample(model, positive, negative)["samples"]
    assert not torch.equal(h.sample(comfy_versions.apply_lora(model, lora, 1.0), positive, negative)["samples"], base)
    assert torch.equal(h.sample(model, positive, negative)["samples"], base)  # the input model is untouched


def test_train_lora_calls_a_v3_node_with_lists_and_its_defaults(monkeypatch):
    """0.38's TrainLoraNode: a V3 node with is_input_list (every input a one-item list), newer inputs
    at their schema defaults, result (lora, loss, steps)."""
    import comfy_extras.nodes_train as native
    from comfy_api.latest import io
    received = {}

    class TrainLoraNode(io.ComfyNode):
        @classmethod
        def define_schema(cls):
            return io.Schema(node_id="TrainLoraNodeV3Standin", is_input_list=True, inputs=[
                io.Model.Input("model"), io.Int.Input("steps", default=16), io.Int.Input("checkpoint_depth", default=1),
                io.Boolean.Input("offloading", default=False)], outputs=[])

        @classmethod
        def execute(cls, model, steps, checkpoint_depth, offloading):
            received.update(model=model, steps=steps, checkpoint_depth=checkpoint_depth, offloading=offloading)
            return io.NodeOutput({"lora": 1}, {"loss": []}, steps)

    monkeypatch.setattr(native, "TrainLoraNode", TrainLoraNode)
    assert comfy_versions.train_lora("M", {"samples": None}, [], steps=3, rank=1) == {"lora": 1}
    assert received == {"model": ["M"], "steps": [3], "checkpoint_depth": [1], "offloading": [False]}
