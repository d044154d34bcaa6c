"""Training through kernels that have a backward (infusion/training/kernels.py), whatever fast kernels the user's
ComfyUI samples with.

A CPU cannot run SageAttention, FlashAttention, comfy-kitchen's INT8 attention or fp16 accumulation, so each is
played by a stand-in put where ComfyUI puts the real one (a flag picks it at import and model files bind it by
name; a node puts it in the MODEL's attention override slot); the stand-in refuses backward, as the real ones
do. Each test checks that training never calls the stand-in and that sampling calls it again afterwards.
train_on_model enters kernels_with_backward(patcher) around its sampling setup.
"""
import sys
import types

import pytest
import torch

from infusion_dev import comfy_harness as h
from infusion_dev.planted import planted_setup

NO_BACKWARD = "this kernel has no backward pass"


def comfyui_defines(path: str, name: str) -> bool:
    """Each version runs the cases it has: 0.33 added sage3, comfy-kitchen's INT8 attention and
    set_model_optimized_attention; 0.3.64's scaled fp8 ops went in 0.33."""
    return h.comfyui_has(path, f"def {name}(")


@pytest.fixture
def kernels(pack):
    return h.pack_submodule(pack, "infusion.training.kernels")


@pytest.fixture
def cm(pack):
    return h.pack_submodule(pack, "infusion.training.comfy_model")


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError(NO_BACKWARD)


def no_backward_kernel(calls):
    """An attention kernel (wrapped as ComfyUI wraps its own, so it honours the override slot) whose output
    refuses backward; it counts its calls."""
    from comfy.ldm.modules import attention

    @attention.wrap_attn
    def kernel(*args, **kwargs):
        calls.append(1)
        return _NoBackward.apply(attention.attention_pytorch(*args, **kwargs))
    return kernel


def bindings(function):
    """(module, name) of every module global named optimized_attention(_masked) bound to `function`."""
    return [(m, n) for m in list(sys.modules.values()) if isinstance(getattr(m, "__dict__", None), dict)
            for n in ("optimized_attention", "optimized_attention_masked") if vars(m).get(n) is function]


def start_comfyui_with(monkeypatch, name, kernel):
    """As ComfyUI started with the flag that picks attention.<name>: that function is the one `optimized_attention`
    (and every model file that imported it by name) holds."""
    from comfy.ldm.modules import attention
    monkeypatch.setattr(attention, name, kernel)
    bound = bindings(attention.optimized_attention) + bindings(attention.optimized_attention_masked)
    for module, attr in bound:
        monkeypatch.setattr(module, attr, kernel)
    return bound


def train(pack, cm, model, clip, hooks=None):
    loop = h.pack_submodule(pack, "infusion.training.loop")
    start, _, _, conds, latents = planted_setup(pack, model, clip, latent=8)
    settings = loop.TrainingSettings(steps=1, batch_size=2, gradient_accumulation=1, precision="fp32", flip=False)
    return cm.train_on_model(model, start, conds[:2], latents, settings, hooks)


def backward_through(cm, model):
    """One forward and backward through the diffusion model, outside training (the stand-in is on its path)."""
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    context = torch.randn(1, 77, 768)
    with cm.autograd_weights(model.model):
        out = model.model.apply_model(x, torch.tensor([10.0]), c_crossattn=context,
                                      transformer_options=dict(model.model_options.get("transformer_options", {})))
        out.sum().backward()


@pytest.mark.parametrize("name", [n for n in ("attention_sage", "attention_flash", "attention3_sage",
                                                "attention_comfy_kitchen_int8")
                                  if comfyui_defines("comfy/ldm/modules/attention.py", n)])
def test_training_swaps_a_kernel_without_backward_for_pytorch_attention(pack, cm, sd15, monkeypatch, name):
    """--use-sage-attention / --use-flash-attention (and 0.33's sage3 and --use-ck-attention): the kernel ComfyUI
    bound at import, under every name it was bound to, is PyTorch's while training and the user's afterwards."""
    from comfy.ldm.modules import attention
    model, clip = sd15
    calls = []
    kernel = no_backward_kernel(calls)
    bound = start_comfyui_with(monkeypatch, name, kernel)
    assert any(m is attention for m, _ in bound) and len({m for m, _ in bound}) > 2  # model files bind it by name
    with pytest.raises(RuntimeError, match=NO_BACKWARD):
        backward_through(cm, model)
    calls.clear()

    state = train(pack, cm, model, clip)
    assert calls == [] and all(v.abs().sum() > 0 for v in state.vectors.values())
    assert all(getattr(m, n) is kernel for m, n in bound)  # every name holds the user's kernel again
    h.sample(model, h.encode(clip, "a photo of a dog"), h.encode(clip, ""), steps=1)
    assert calls  # sampling runs it


def test_a_model_file_imported_during_training_gets_the_users_kernel_back(kernels, sd15, monkeypatch):
    """A module imported while training binds the stand-in; it is rebound too. Nested use changes nothing."""
    from comfy.ldm.modules import attention
    kernel = no_backward_kernel([])
    start_comfyui_with(monkeypatch, "attention_sage", kernel)
    late = types.ModuleType("late_model_file")
    with kernels.kernels_with_backward(sd15[0]):
        with kernels.kernels_with_backward(sd15[0]):
            assert attention.optimized_attention is not kernel and attention.attention_sage is kernel
            late.optimized_attention = attention.optimized_attention
            monkeypatch.setitem(sys.modules, "late_model_file", late)
        assert attention.optimized_attention is not kernel
    assert attention.optimized_attention is kernel and late.optimized_attention is kernel


def override_nodes():
    """Ways a node puts an attention kernel in the MODEL's override slot: ComfyUI's own
    set_model_optimized_attention (0.33: ModelAttentionBackend uses it), and directly as other packs' sage nodes do
    (KJNodes' PathchSageAttentionKJ: an override that ignores the function it is given)."""
    def comfyui(model, kernel):
        model.set_model_optimized_attention(kernel)

    def other_pack(model, kernel):
        model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = (
            lambda func, *args, **kwargs: kernel(*args, **kwargs))
    nodes = {"another pack's node": other_pack}
    if comfyui_defines("comfy/model_patcher.py", "set_model_optimized_attention"):
        nodes["ComfyUI's set_model_optimized_attention"] = comfyui
    return nodes


@pytest.mark.parametrize("node", override_nodes().values(), ids=list(override_nodes()))
def test_an_attention_override_is_bypassed_in_training_and_kept_for_sampling(pack, cm, sd15, node):
    model, clip = sd15
    calls = []
    node(model, no_backward_kernel(calls))
    override = model.model_options["transformer_options"]["optimized_attention_override"]
    with pytest.raises(RuntimeError, match=NO_BACKWARD):
        backward_through(cm, model)
    calls.clear()

    state = train(pack, cm, model, clip)
    assert calls == [] and all(v.abs().sum() > 0 for v in state.vectors.values())
    assert model.model_options["transformer_options"]["optimized_attention_override"] is override
    h.sample(model, h.encode(clip, "a photo of a dog"), h.encode(clip, ""), steps=1)
    assert calls


def test_a_dit_concept_trains_past_another_packs_override_and_keeps_it(pack, cm):
    """On a DiT the concept's own override wraps the node's (it calls it); training keeps the concept's and
    bypasses the node's, through the Train node (gradient checkpointing on)."""
    from test_dit import TRAIN, photo_latents

    model, clip = h.tiny_dit("flux")
    model = model.clone()
    calls = []
    kernel = no_backward_kernel(calls)
    model.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = (
        lambda func, *args, **kwargs: kernel(*args, **kwargs))
    concept = h.run_node(h.train_node(pack), model, clip, latents=photo_latents(), output_name="kernels_flux",
                         **TRAIN).result[0]
    assert calls == [] and any(v.abs().sum() > 0 for v in concept.values.values())
    h.sample(model, h.encode(clip, "a photo of a dog"), h.encode(clip, ""), h.dit_latent(model), steps=1,
             scheduler="simple")
    assert calls


def test_the_override_inside_the_concepts_own_is_dropped_only_while_training(pack, kernels):
    dit = h.pack_submodule(pack, "infusion.families.dit")
    model = h.tiny_dit("flux")[0].clone()
    options = model.model_options.setdefault("transformer_options", {})
    other = lambda func, *args, **kwargs: func(*args, **kwargs)  # noqa: E731
    ours = dit.JointAttention(("residual",), other)
    options["optimized_attention_override"] = ours
    with kernels.kernels_with_backward(model):
        inside = options["optimized_attention_override"]
        assert isinstance(inside, dit.JointAttention) and inside.previous is None and inside.residuals == ours.residuals
    assert options["optimized_attention_override"] is ours


def test_fp16_accumulation_is_off_while_training_and_back_after(pack, cm, sd15):
    """--fast fp16_accumulation (or a node's ON_PRE_RUN callback, as KJNodes' ModelPatchTorchSettings sets it)."""
    from comfy.patcher_extension import CallbacksMP
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "allow_fp16_accumulation"):
        pytest.skip("this torch has no fp16 accumulation switch")
    model, clip = sd15
    model.add_callback(CallbacksMP.ON_PRE_RUN, lambda _: setattr(matmul, "allow_fp16_accumulation", True))
    seen = []

    class Hooks(h.pack_submodule(pack, "infusion.training.loop").TrainingHooks):
        def on_step(self, step, total, losses):
            seen.append(matmul.allow_fp16_accumulation)

    previous = matmul.allow_fp16_accumulation  # a property of torch's (monkeypatch would delete it afterwards)
    matmul.allow_fp16_accumulation = True
    try:
        train(pack, cm, model, clip, Hooks())
        assert seen == [False] and matmul.allow_fp16_accumulation is True
    finally:
        matmul.allow_fp16_accumulation = previous


def test_a_quantized_backward_left_on_by_train_lora_is_off_while_training(kernels, sd15, monkeypatch):
    import comfy.model_management as mm
    monkeypatch.setattr(mm, "training_fp8_bwd", True, raising=False)  # 0.33's global (absent on 0.3.64)
    with kernels.kernels_with_backward(sd15[0]):
        assert mm.training_fp8_bwd is False
    assert mm.training_fp8_bwd is True


def fp8_op_classes():
    """fp8_e4m3fn_fast (fp8_ops, on GPUs with fp8 compute) and 0.3.64's scaled fp8 checkpoints with fp8
    optimizations (scaled_fp8_ops with fp8_matrix_mult)."""
    import comfy.ops
    found = {"fp8_ops": comfy.ops.fp8_ops}
    if hasattr(comfy.ops, "scaled_fp8_ops"):
        found["scaled_fp8_ops"] = comfy.ops.scaled_fp8_ops(fp8_matrix_mult=True, scale_input=True)
    return found


@pytest.mark.parametrize("ops", ["fp8_ops"] + ["scaled_fp8_ops"] * comfyui_defines("comfy/ops.py", "scaled_fp8_ops"))
def test_fp8_linears_backpropagate_through_the_dequantized_weight(kernels, sd15, monkeypatch, ops):
    import comfy.ops
    classes = fp8_op_classes()
    linear = classes[ops].Linear(32, 16, bias=False, dtype=torch.float8_e4m3fn).eval()
    weight = (torch.randn(16, 32, generator=torch.Generator().manual_seed(0)) * 0.5).to(torch.float8_e4m3fn)
    linear.weight = torch.nn.Parameter(weight, requires_grad=False)
    fast_calls = []
    fast = comfy.ops.fp8_linear

    def spy(module, x):
        fast_calls.append(torch.is_grad_enabled() and x.requires_grad)  # whether a backward would pass it
        return fast(module, x)
    monkeypatch.setattr(comfy.ops, "fp8_linear", spy)
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    direction = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(2))

    with kernels.kernels_with_backward(sd15[0]):
        (linear(x) * direction).sum().backward()
        with torch.no_grad():
            linear(x)
    assert fast_calls == [False]  # the fp8 matmul only where no gradient is needed
    expected = direction @ weight.float()
    torch.testing.assert_close(x.grad, expected)
    assert comfy.ops.fp8_linear is spy  # restored

    x.grad = None
    fast_calls.clear()
    try:  # without the module: 0.3.64's scaled fp8 fails in backward, fp8_ops reaches the fp8 matmul and falls back
        (linear(x) * direction).sum().backward()
    except RuntimeError as e:
        assert ops == "scaled_fp8_ops" and "_scaled_mm" in str(e)
    assert fast_calls == [True]
