"""Training's passes through kernels that have a backward, whatever fast kernels ComfyUI runs for sampling.

ComfyUI's fast paths are inference kernels: SageAttention (--use-sage-attention; its CUDA kernels have no
autograd, so gradients through attention are dropped or refused), the FlashAttention custom op
(--use-flash-attention: `torch.library.custom_op` with no `register_autograd`, so backward raises),
0.33's comfy-kitchen INT8 attention (--use-ck-attention, "comfy kitchen attention" in ModelAttentionBackend:
custom ops without autograd), `torch._scaled_mm` in the fp8 ops ("derivative for aten::_scaled_mm is not
implemented"), and fp16 accumulation in cuBLAS (--fast fp16_accumulation: ComfyUI's own trainer warns it
NaNs). `kernels_with_backward` swaps each for one with a backward for the duration of training, and puts
everything back afterwards, so sampling and the previews (sampled between training calls) keep them.
ComfyUI is imported inside functions only.
"""
from __future__ import annotations

import logging
import sys
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import torch

# comfy/ldm/modules/attention.py's kernels without a backward (the last two exist on 0.33 only).
NO_BACKWARD_ATTENTION = ("attention_sage", "attention_flash", "attention3_sage", "attention_comfy_kitchen_int8")
OVERRIDE_KEY = "optimized_attention_override"  # ComfyUI's slot in transformer_options
_CALLBACK_KEY = "infusion_fp32_accumulation"


@contextmanager
def kernels_with_backward(patcher: Any) -> Iterator[None]:
    """While training `patcher` (the clone training owns, before its sampling setup copies its options):
    attention, fp8 linears and matmul accumulation run kernels that backpropagate correctly."""
    with ExitStack() as stack:
        stack.enter_context(_attention_with_backward())
        stack.enter_context(_without_foreign_override(patcher))
        stack.enter_context(_fp8_linear_with_backward())
        stack.enter_context(_fp32_accumulation(patcher))
        yield


def _rebind(mapping: dict[int, Callable], skip: Any = None) -> None:
    """Every module global bound to a function in `mapping` (by identity) rebound to its value there. Model
    files bind ComfyUI's attention by name at import (`from comfy.ldm.modules.attention import
    optimized_attention`, in dozens of modules on either version), so swapping attention.py's globals alone
    would miss them. `skip`: the module whose own definitions of the kernels stay."""
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        changes = [(name, mapping[id(value)]) for name, value in list(namespace.items())
                   if id(value) in mapping and callable(value)
                   and not (module is skip and name in NO_BACKWARD_ATTENTION)]
        for name, value in changes:
            namespace[name] = value


@contextmanager
def _attention_with_backward() -> Iterator[None]:
    """ComfyUI chooses `optimized_attention` once, at import, from its flags: where that (or any name bound to
    it) is a kernel without a backward, PyTorch's SDPA (ComfyUI's attention_pytorch, which still honours the
    override slot) runs instead. Afterwards the names are rebound to the user's kernel, also in modules
    imported meanwhile (which bound the stand-in)."""
    import comfy.ldm.modules.attention as attention

    chosen = {id(attention.optimized_attention), id(attention.optimized_attention_masked)}
    fast = [f for f in (getattr(attention, n, None) for n in NO_BACKWARD_ATTENTION) if id(f) in chosen]
    if not fast:  # ComfyUI chose a kernel with a backward: nothing to look for (the scan takes ~50 ms)
        yield
        return

    def stand_in(original: Callable) -> Callable:
        def attention_with_backward(*args: Any, **kwargs: Any) -> Any:
            return attention.attention_pytorch(*args, **kwargs)
        attention_with_backward.replaces = original  # type: ignore[attr-defined]
        return attention_with_backward

    stand_ins = {id(f): stand_in(f) for f in fast}
    _rebind(stand_ins, skip=attention)
    try:
        yield
    finally:
        _rebind({id(s): s.replaces for s in stand_ins.values()})


@contextmanager
def _without_foreign_override(patcher: Any) -> Iterator[None]:
    """An attention override another node put on the MODEL (ComfyUI's ModelAttentionBackend /
    set_model_optimized_attention, the sage and flash nodes of other packs) calls its own kernel, which may
    have no backward, and nothing says which. Every one found replaces ComfyUI's attention kernel: training
    bypasses it, and ComfyUI's attention (with a backward, see above) runs. The pack's own override (Infusion
    on DiTs) stays, without calling the one it wrapped. The MODEL keeps it for sampling."""
    from ..families.dit import JointAttention

    options = patcher.model_options.get("transformer_options", {})
    current = options.get(OVERRIDE_KEY)
    foreign = current.previous if isinstance(current, JointAttention) else current
    if foreign is None:
        yield
        return
    logging.info("Infusion: training bypasses the attention override %s on this model (it may have no backward "
                 "pass); sampling and previews keep it", getattr(foreign, "__qualname__", type(foreign).__name__))
    if isinstance(current, JointAttention):
        options[OVERRIDE_KEY] = JointAttention(current.residuals, None)
    else:
        del options[OVERRIDE_KEY]
    try:
        yield
    finally:
        options[OVERRIDE_KEY] = current


@contextmanager
def _fp8_linear_with_backward() -> Iterator[None]:
    """fp8_e4m3fn_fast (fp8_ops) and 0.3.64's scaled fp8 with fp8 optimizations call comfy.ops.fp8_linear, whose
    torch._scaled_mm has no derivative: 0.3.64's scaled path then fails in backward. Where the input needs a
    gradient, fp8_linear answers None, and the op takes its own fallback (the dequantized weight through
    F.linear); inputs that need none (no backward passes them) keep the fp8 matmul. 0.33's quantized
    (mixed-precision) ops train through their own QuantLinearFunc; a `quantized_backward` left on by ComfyUI's
    Train LoRA node (a global it never resets) is off meanwhile, so gradients stay in the compute dtype."""
    import comfy.model_management as mm
    import comfy.ops

    fast = getattr(comfy.ops, "fp8_linear", None)
    fp8_backward = getattr(mm, "training_fp8_bwd", None)

    def fp8_linear(module: Any, input: torch.Tensor) -> Any:
        if torch.is_grad_enabled() and input.requires_grad:
            return None
        return fast(module, input)

    if fast is not None:
        comfy.ops.fp8_linear = fp8_linear
    if fp8_backward is not None:
        mm.training_fp8_bwd = False
    try:
        yield
    finally:
        if fast is not None:
            comfy.ops.fp8_linear = fast
        if fp8_backward is not None:
            mm.training_fp8_bwd = fp8_backward


@contextmanager
def _fp32_accumulation(patcher: Any) -> Iterator[None]:
    """--fast fp16_accumulation sets torch.backends.cuda.matmul.allow_fp16_accumulation (a global torch switch;
    some nodes set it themselves, or in an ON_PRE_RUN callback, which runs after this is entered): off while
    training (fp16 autocast then accumulates in fp32), and put back afterwards."""
    from comfy.patcher_extension import CallbacksMP

    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "allow_fp16_accumulation"):  # torch < 2.7
        yield
        return
    previous = matmul.allow_fp16_accumulation

    def off(*_: Any) -> None:
        matmul.allow_fp16_accumulation = False

    off()
    patcher.add_callback_with_key(CallbacksMP.ON_PRE_RUN, _CALLBACK_KEY, off)
    try:
        yield
    finally:
        patcher.remove_callbacks_with_key(CallbacksMP.ON_PRE_RUN, _CALLBACK_KEY)
        matmul.allow_fp16_accumulation = previous
