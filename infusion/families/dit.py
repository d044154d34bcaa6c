"""Joint-attention DiTs (Flux, Chroma, Hunyuan, Qwen-Image, Z-Image, Krea 2): the residual in value space.

In these models the prompt's tokens are a stream that attention updates: each attention layer runs
over [text tokens, image tokens] at once. In every such layer l a residual r_l (heads x head width) is
added to the values at the class word's text rows; keys are untouched, so the layer's attention logits
are the base model's. Two readings (the concept's variant):
- value: every query sees the residual, so the text tokens carry the concept on into later layers;
- image-queries: only the image queries do; the text rows are computed from the base values, and the
  text stream entering the next layer is the base model's (the same cost: the queries are split).

The values are reached through ComfyUI's attention override (`transformer_options
["optimized_attention_override"]`), which these models' attention honours; it is one slot, so the
override here calls whatever was set before it (another pack's) and adds nothing where no concept acts.
ComfyUI labels each call with `block_type` and `block_index`; the prompt's context length, and where it
sits, reach the override through an APPLY_MODEL wrapper. Text comes first in the joint sequence in every
family here but HiDream: the prompt's rows, and any the model joins to them (the adapter's `text_layout`).
"""
from __future__ import annotations

import functools
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from ..concept import InfusionConcept
from ..layers import LayerId
from ..residual import BATCH_KEY, RESIDUALS_KEY, ConceptResidual, add_at_rows
from .base import FamilyAdapter
from .unet import call_copies, replaced_forwards

OVERRIDE_KEY = "optimized_attention_override"  # ComfyUI's, in transformer_options
# transformer_options entry: DiTAdapter.text_rows of the model call
TEXT_KEY = "infusion_text"
TEXT_WRAPPER_KEY = "infusion_text_rows"


class DiTResidual(ConceptResidual):
    """A concept's value-space residuals, by the block labels ComfyUI gives each attention call."""

    def __init__(self, concept: InfusionConcept, **options: Any):
        super().__init__(concept, **options)
        self.image_queries_only = concept.image_queries_only

    @staticmethod
    def runtime_key(layer: LayerId) -> Any:
        return layer.block, layer.number  # transformer_options["block_type"], ["block_index"]


def add_to_values(values: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], vector: torch.Tensor,
                  heads_first: bool) -> torch.Tensor:
    """`values` with `vector` (heads x head width) added at the (batch, token) rows. Layouts: [batch, heads,
    tokens, head width] (`heads_first`, ComfyUI's skip_reshape), [batch, tokens, heads x head width], or [batch,
    tokens, heads, head width] (SD3's values, which ComfyUI's attention reshapes as the others)."""
    if not heads_first:
        return add_at_rows(values, rows, vector.view(values.shape[2:]) if values.ndim == 4 else vector)
    per_head = vector.view(values.shape[1], values.shape[3])
    return add_at_rows(values.transpose(1, 2), rows, per_head).transpose(1, 2)


class JointAttention:
    """ComfyUI's attention override, adding the applied concepts' residuals to the values.

    Called as `override(func, q, k, v, heads, [mask], **kwargs)` by ComfyUI's attention wrapper; passes
    on to `previous` (another pack's override) or to `func`. Immutable: applying one more concept makes a
    new one (so clones of a model never share a changed override).
    """

    def __init__(self, residuals: tuple[DiTResidual, ...], previous: Callable | None):
        self.residuals = residuals
        self.previous = previous

    def __deepcopy__(self, memo):  # 0.3.64 deep-copies model options on clone; nothing here changes
        return self

    def _next(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        if self.previous is not None:
            return self.previous(func, *args, **kwargs)
        return func(*args, **kwargs)

    def _acting(self, options: dict, values: torch.Tensor, heads_first: bool) -> list[tuple[DiTResidual, int, tuple]]:
        positions, text = options.get(BATCH_KEY), options.get(TEXT_KEY)
        if positions is None or text is None or options.get("block_type") is None:
            return []
        rows_here = values.shape[2 if heads_first else 1]
        # Not the prompt's call: Wan's CLIP image rows, SD3.5 Medium's attention over the image alone.
        if rows_here < text[1] or (text[3] is not None and rows_here != text[3]):
            return []
        key = (options["block_type"], options.get("block_index"))
        out = []
        for residual in self.residuals:
            i = residual.layer_at(key, options)
            if i is None:
                continue
            rows = positions.rows(residual.word, options.get("uuids", []), values.shape[0], text[0], values.device)
            if rows is not None:
                out.append((residual, i, (rows[0], rows[1] + text[2]) if text[2] else rows))
        return out

    def __call__(self, func: Callable, *args: Any, **kwargs: Any) -> Any:
        options = kwargs.get("transformer_options") or {}
        q, k, v = args[:3]
        heads_first = bool(kwargs.get("skip_reshape", False))
        acting = self._acting(options, v, heads_first)
        if not acting:
            return self._next(func, *args, **kwargs)
        every = v
        for residual, i, rows in acting:
            if not residual.image_queries_only:
                every = add_to_values(every, rows, residual.scaled(i), heads_first)
        image = every
        for residual, i, rows in acting:
            if residual.image_queries_only:
                image = add_to_values(image, rows, residual.scaled(i), heads_first)
        if image is every:
            return self._next(func, q, k, every, *args[3:], **kwargs)
        # The prompts that say an image-queries concept's word get their queries split; every other
        # prompt of the batch keeps the unsplit call the base model makes (so its output keeps its bits).
        items = sorted({int(b) for residual, _, rows in acting if residual.image_queries_only for b in rows[0]})
        if len(items) == v.shape[0]:
            return self._split_queries(func, args, kwargs, every, image, options[TEXT_KEY][1], heads_first)
        out = self._next(func, q, k, every, *args[3:], **kwargs).clone()
        index = torch.tensor(items, device=v.device)
        sub = tuple(t.index_select(0, index) for t in (q, k)) + args[2:]
        out[index] = self._split_queries(func, sub, kwargs, every[index], image[index], options[TEXT_KEY][1],
                                         heads_first, index, v.shape[0])
        return out

    def _split_queries(self, func: Callable, args: tuple, kwargs: dict, text_values: torch.Tensor,
                       image_values: torch.Tensor, text_rows: int, heads_first: bool,
                       items: torch.Tensor | None = None, batch: int = 0) -> torch.Tensor:
        """Text queries against `text_values`, image queries against `image_values`, joined back (for the
        batch `items` of a batch of `batch`, when given)."""
        q, k = args[:2]
        queries = q.shape[2] if heads_first else q.shape[1]
        mask_positional = len(args) > 4
        mask = args[4] if mask_positional else kwargs.get("mask")
        if mask is not None and items is not None and mask.ndim >= 3 and mask.shape[0] == batch:
            mask = mask.index_select(0, items)
        outputs = []
        for rows, values in ((slice(0, text_rows), text_values), (slice(text_rows, None), image_values)):
            part = q[:, :, rows] if heads_first else q[:, rows]
            # A mask with a row per query is split alike; a key-only mask serves both halves.
            per_query = mask is not None and mask.ndim >= 3 and mask.shape[-2] == queries
            part_mask = mask[..., rows, :] if per_query else mask
            rest = (args[3], part_mask) + args[5:] if mask_positional else args[3:]
            call_kwargs = kwargs if mask_positional else {**kwargs, "mask": part_mask}
            outputs.append(self._next(func, part, k, values, *rest, **call_kwargs))
        return torch.cat(outputs, dim=2 if kwargs.get("skip_output_reshape", False) else 1)


def carry_text_rows(text_rows: Callable[[torch.Tensor, int, dict], tuple[int, int, int, int | None]]) -> Callable:
    """APPLY_MODEL wrapper: where the prompt's rows are in the joint sequence (`text_rows` of the model call's latent,
    context length and other inputs) handed to the attention override of this model call; and the concepts'
    override put back on top of whatever holds the slot now. A node applied after the concepts that sets the
    slot itself (ComfyUI's ModelAttentionBackend, the sage / flash attention nodes of other packs) replaces the
    override without calling it; re-asserted here, at every model call, the concepts act and then call that
    node's attention."""
    def wrapper(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None,
                *args, **kwargs):
        if c_crossattn is not None and transformer_options is not None:
            transformer_options = {**transformer_options, TEXT_KEY: text_rows(x, int(c_crossattn.shape[1]), kwargs)}
            residuals, current = transformer_options.get(RESIDUALS_KEY), transformer_options.get(OVERRIDE_KEY)
            if residuals and not isinstance(current, JointAttention):
                transformer_options[OVERRIDE_KEY] = JointAttention(residuals, current)
        return executor(x, t, c_concat, c_crossattn, control, transformer_options, *args, **kwargs)
    return wrapper


@functools.cache
def labelled(base: type, block_type: str, index: int) -> type:
    """`base` (a module's class) with its attention calls labelled (`block_type`, `index`), on a copy of
    transformer_options: a recomputation under gradient checkpointing then sees this call's label."""
    class Labelled(base):
        unlabelled = base

        def forward(self, *args: Any, **kwargs: Any) -> Any:
            options = kwargs.get("transformer_options")
            if options is not None:
                kwargs["transformer_options"] = {**options, "block_type": block_type, "block_index": index}
            return super().forward(*args, **kwargs)

    Labelled.__name__ = Labelled.__qualname__ = f"{base.__name__}Labelled{index}"
    return Labelled


class BlockLabel:
    """A `patches_replace["dit"]` block patch that labels the block's attention calls with its block_type
    and block_index (as newer ComfyUI does itself; 0.3.64's Flux and Qwen-Image do not), then runs
    whatever replaced the block before it (another pack's patch) or the block itself."""

    def __init__(self, block_type: str, index: int, previous: Any = None):
        self.block_type, self.index, self.previous = block_type, index, previous

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args: dict, extra: dict) -> dict:
        options = args.get("transformer_options")
        if options is not None:
            options["block_type"], options["block_index"] = self.block_type, self.index
        if self.previous is not None:
            return self.previous(args, extra)
        return extra["original_block"](args)


class DiTAdapter(FamilyAdapter):
    """What every joint-attention family here shares; subclasses name their layers and blocks."""

    vector_space = "value"
    variants = ("value", "image-queries")
    # Blocks that add to their input tensors in place (Flux's `img += ...`): see safe_blocks.
    mutates_block_inputs = False

    def text_layout(self, diffusion_model: torch.nn.Module, context_length: int,
                    inputs: Mapping[str, Any]) -> tuple[int, int]:
        """(the prompt's first row in the joint sequence, how many rows text takes there: the prompt's and any
        the model joins to them) for a context of `context_length` rows and the model call's other `inputs`."""
        return 0, context_length

    def image_rows(self, diffusion_model: torch.nn.Module, x: torch.Tensor) -> int | None:
        """The image's rows in the joint sequence for latent `x`, where the model also attends over the image
        alone under the prompt's label (the override then acts only on calls of text and image rows); None where
        it does not."""
        return None

    def text_rows(self, diffusion_model: torch.nn.Module, x: torch.Tensor, context_length: int,
                  inputs: Mapping[str, Any]) -> tuple[int, int, int, int | None]:
        """For a model call on latent `x` with a context of `context_length` rows and other `inputs`: (the rows the
        word positions count, the rows text takes in the joint sequence, the first of the counted rows there, the
        joint sequence's rows where the override must tell its calls from others, else None)."""
        first, rows = self.text_layout(diffusion_model, context_length, inputs)
        image = self.image_rows(diffusion_model, x)
        return context_length, rows, first, None if image is None else rows + image

    def blocks(self, diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
        raise NotImplementedError

    def labelled_blocks(self, diffusion_model: torch.nn.Module) -> list[tuple[str, int, str]]:
        """(block patch name, index, block_type) of each block whose attention a BlockLabel labels."""
        return []

    def labelled_modules(self, diffusion_model: torch.nn.Module) -> list[tuple[str, str, int]]:
        """(module path, block_type, index) of each module whose attention calls the adapter labels through its
        class (an object patch, put in place when ComfyUI loads the model and taken away after): a class holds no
        module, so a model ComfyUI reloads or copies under the same patches (0.33's non-dynamic delegate, Train
        LoRA's copy) labels its own modules."""
        return []

    def residual(self, concept: InfusionConcept, **options: Any) -> DiTResidual:
        return DiTResidual(concept, **options)

    def install(self, patcher: Any, residual: DiTResidual) -> None:
        from comfy.patcher_extension import WrappersMP

        options = patcher.model_options.setdefault("transformer_options", {})
        current = options.get(OVERRIDE_KEY)
        residuals = tuple(options.get(RESIDUALS_KEY, ())) + (residual,)
        options[RESIDUALS_KEY] = residuals
        options[OVERRIDE_KEY] = JointAttention(residuals, current.previous if isinstance(current, JointAttention)
                                               else current)
        dm = patcher.get_model_object("diffusion_model")
        if not patcher.get_wrappers(WrappersMP.APPLY_MODEL, TEXT_WRAPPER_KEY):
            patcher.add_wrapper_with_key(WrappersMP.APPLY_MODEL, TEXT_WRAPPER_KEY,
                                         carry_text_rows(lambda x, n, inputs: self.text_rows(dm, x, n, inputs)))
        replaced = options.get("patches_replace", {}).get("dit", {})
        for name, i, block_type in self.labelled_blocks(dm):
            previous = replaced.get((name, i))
            if not isinstance(previous, BlockLabel):
                patcher.set_model_patch_replace(BlockLabel(block_type, i, previous), "dit", name, i)
        for path, block_type, i in self.labelled_modules(dm):
            key = f"diffusion_model.{path}.__class__"
            # Another clone's label may be in place on the shared model: the class it labels is the one that runs.
            current = patcher.get_model_object(key)
            patcher.add_object_patch(key, labelled(current.__dict__.get("unlabelled", current), block_type, i))

    def applied(self, patcher: Any) -> list[DiTResidual]:
        return list(patcher.model_options.get("transformer_options", {}).get(RESIDUALS_KEY, ()))

    @contextmanager
    def training_blocks(self, diffusion_model: torch.nn.Module, checkpointing: bool,
                        trained: Sequence[torch.Tensor]) -> Iterator[None]:
        if not checkpointing and not self.mutates_block_inputs:
            yield
            return
        with replaced_forwards(self.blocks(diffusion_model), lambda f: safe_block(f, checkpointing, trained)):
            yield


def _storage(t: torch.Tensor) -> int | None:
    """Where a tensor's memory is; None for a tensor subclass without a storage of its own (the fp8 weights of
    ComfyUI's quantized ops, which saves for backward and which no block input can share)."""
    try:
        return t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return None


@contextmanager
def saved_copies(inputs: Sequence[torch.Tensor]) -> Iterator[None]:
    """Tensors that autograd saves for backward are copied when they share memory with `inputs`.

    A block that adds to its inputs in place (`img += attn`) changes tensors its own layer norms saved:
    autograd then refuses the backward, and a recomputation under gradient checkpointing would silently
    read the changed values (a wrong gradient, measured here at 0.25% on a Flux double block). The copies
    keep what each operation saw; nothing else is copied.
    """
    storages = {_storage(t) for t in inputs}

    def pack(t: torch.Tensor) -> torch.Tensor:
        shared = _storage(t)
        return t.clone() if shared is not None and shared in storages else t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def safe_block(forward: Callable, checkpointing: bool, trained: Sequence[torch.Tensor]) -> Callable:
    """A block's forward that backpropagates correctly although it changes its inputs in place; with
    `checkpointing`, recomputed during backward (PyTorch's reentrant checkpoint: the forward runs without
    autograd, the backward reruns it on copies of the inputs under ordinary autograd, so saved_copies
    works). The trained vectors go in as inputs too: the block's output depends on them through the
    attention override even where its tensor inputs do not."""
    def run(*args, **kwargs):
        args, kwargs = call_copies(args, kwargs)
        slots = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        names = [n for n, v in kwargs.items() if isinstance(v, torch.Tensor)]

        def call(*tensors):
            tensors = [t.clone() for t in tensors[:len(slots) + len(names)]]  # the block may change them
            call_args, call_kwargs = list(args), dict(kwargs)
            for i, t in zip(slots, tensors):
                call_args[i] = t
            for n, t in zip(names, tensors[len(slots):]):
                call_kwargs[n] = t
            with saved_copies(tensors):
                return forward(*call_args, **call_kwargs)

        inputs = [args[i] for i in slots] + [kwargs[n] for n in names]
        if not checkpointing:
            return call(*inputs)
        return torch.utils.checkpoint.checkpoint(call, *inputs, *trained, use_reentrant=True,
                                                 preserve_rng_state=False)
    return run
