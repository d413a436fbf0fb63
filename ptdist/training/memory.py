"""The memory planner: how much GPU memory a prompt-tuning run needs, per GPU, and the cheapest
placement that fits a card. Read from the model's config on the meta device: no weights are
loaded and nothing is computed, so T5-XXL is planned in seconds on a laptop.

Per GPU, for a run in precision ``p`` (2 bytes for bf16, 4 for fp32) on ``n`` GPUs:

- **weights**: every parameter in ``p``. Under ZeRO-3, 1/n of them, plus the two largest
  layers gathered whole at a time (the one in use and the one prefetched).
- **activations**: what autograd keeps for the backward to the prompt. Counted, not modelled:
  the run's loss is run forward on the meta device (shapes only) under saved-tensor hooks, with
  the micro-batch, prompt, text and target lengths of the run; the frozen weights it refers to
  are not counted again. With activation checkpointing each layer keeps only its input, and
  one layer's activations are rebuilt at a time in the backward. Attention is counted as the
  fused kernel a GPU runs keeps it (query, key, value, output, log-sum-exp: no s x s matrix per
  example), plus the mask of every attention call when the batch holds padding (texts of
  several lengths: `RunShape.padding`): transformers builds it per call (T5: its position
  bias and the padding mask combined, [batch, heads, s, s]; others: the padding mask, which
  SDPA turns into an additive [batch, 1, s, s] one), the kernel keeps it for the backward, and
  on a GPU PyTorch's memory-efficient kernel (the one SDPA picks when there is a mask) keeps a
  copy whose last dimension is padded to a multiple of 8 (`MASK_ALIGNMENT`). T5-XXL at batch
  32 x 356 tokens: 24 x 32 x 64 x 356 x 360 x 2 bytes = 12.6 GB. Padding the lengths to a
  multiple of 8 would save the 4 padded columns only, not the per-call mask, so it is
  counted rather than avoided.
- **optimizer**: the prompt's gradient and AdamW state (two fp32 moments, and under bf16 an
  fp32 master and gradient); the state is split over the n GPUs from ZeRO-1 on.
- **workspace**: the gradients flowing back through one layer: as large as what the largest
  layer keeps.

A run fits a card when the total is within `USABLE` of its memory (the CUDA context and the
allocator's fragmentation take the rest); `ptdist.orchestration.planning.placement` picks, among the
ways to run it that fit, the one of least compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.overrides import TorchFunctionMode

from ptdist.backbones import dtype_of, model_config, model_kind, random_model
from ptdist.training.hardware import GB

USABLE = 0.9
# The memory-efficient attention kernel pads an attention bias's last dimension to this
# multiple (PyTorch's `preprocess_mask`, aten/src/ATen/native/transformers/attention.cpp).
MASK_ALIGNMENT = 8


@dataclass(frozen=True)
class RunShape:
    """What a run's memory depends on, besides its model: all per forward of one GPU."""

    precision: str  # bf16 | fp32
    micro_batch: int  # examples per GPU per forward
    prompt_length: int
    text_length: int  # tokens of text, specials included (TrainConfig.max_length)
    target_length: int = 4  # decoder tokens (encoder-decoder models): a label word and </s>
    # The batch holds texts of several lengths, so every attention call has a mask (a batch of
    # equal lengths has none: transformers skips it).
    padding: bool = True


@dataclass(frozen=True)
class Memory:
    """Bytes per GPU."""

    weights: float
    activations: float
    optimizer: float
    workspace: float

    @property
    def total(self) -> float:
        return self.weights + self.activations + self.optimizer + self.workspace

    def describe(self) -> str:
        return (f"{size(self.total)} (weights {size(self.weights)}, activations "
                f"{size(self.activations)}, optimizer {size(self.optimizer)}, workspace "
                f"{size(self.workspace)})")


def size(nbytes: float) -> str:
    """``30.1 GB``, ``48 MB``: bytes as a reader compares them with a card's memory."""
    return f"{nbytes / GB:.1f} GB" if nbytes >= 0.1 * GB else f"{nbytes / 1e6:.0f} MB"


@dataclass(frozen=True)
class Saved:
    """What autograd keeps for one forward, in bytes: in all, in the largest layer, and the
    layers' inputs (all a checkpointed model keeps of its layers)."""

    total: float
    largest_layer: float
    layer_inputs: float
    outside_layers: float


class ModelMemory:
    """The memory of runs of one model in one precision, from its config on the meta device."""

    def __init__(self, model: str, precision: str):
        from ptdist.backbones.mlm import MaskedLMBackbone
        from ptdist.backbones.seq2seq import Seq2SeqBackbone

        self.model, self.precision = model, precision
        self.kind = model_kind(model_config(model))
        with torch.device("meta"):
            built = random_model(model, dtype_of(precision))
        backbone = (Seq2SeqBackbone if self.kind == "seq2seq" else MaskedLMBackbone)(
            model, built, None)
        self.backbone = backbone
        self.parameters = sum(p.numel() for p in built.parameters())
        # DeepSpeed's "largest layer": the most parameters any one module holds itself.
        self.largest_layer = max(sum(p.numel() for p in m.parameters(recurse=False))
                                 for m in built.modules())
        self.bytes = torch.finfo(dtype_of(precision)).bits // 8

    def estimate(self, run: RunShape, gpus: int = 1, zero_stage: int = 0,
                 checkpointing: bool = False) -> Memory:
        if run.precision != self.precision:
            raise ValueError(f"planned for {self.precision}, asked for {run.precision}")
        weights = self.parameters * self.bytes
        if zero_stage == 3:
            weights = weights / gpus + 2 * self.largest_layer * self.bytes
        saved = self.saved(run)
        activations = saved.total if not checkpointing else \
            saved.outside_layers + saved.layer_inputs + saved.largest_layer
        prompt = run.prompt_length * self.backbone.hidden_size
        # fp32 moments (8 bytes), and under bf16 an fp32 master copy and gradient (8 more):
        # DeepSpeed's own accounting of a trained parameter (estimate_zero2_model_states_mem_needs)
        state = (16 if self.precision == "bf16" else 8) * prompt
        optimizer = 2 * self.bytes * prompt + state / (gpus if zero_stage >= 1 else 1)
        return Memory(weights, activations, optimizer, saved.largest_layer)

    def saved(self, run: RunShape) -> Saved:
        return _saved(self, run.micro_batch, run.prompt_length, run.text_length,
                      run.target_length, run.padding)


def model_memory(model: str, precision: str) -> ModelMemory:
    """`ModelMemory`, built once per model and precision."""
    return _model_memory(model, precision)


@lru_cache(maxsize=16)
def _model_memory(model: str, precision: str) -> ModelMemory:
    return ModelMemory(model, precision)


@lru_cache(maxsize=256)
def _saved(memory: ModelMemory, examples: int, prompt_length: int, text_length: int,
           target_length: int, padding: bool) -> Saved:
    """Run the loss forward on the meta device and add up what autograd keeps (each tensor
    once, parameters not at all), by layer."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    backbone = memory.backbone
    params = {id(p) for p in backbone.parameters()}
    layers = [m for m in backbone.model.modules() if isinstance(m, GradientCheckpointingLayer)]
    current: list[int | None] = [None]
    inputs = [0.0] * len(layers)
    kept: dict[int, tuple[torch.Tensor, int | None]] = {}  # references keep ids unique

    def enter(index: int):
        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            if current[0] is None:  # a layer, not a layer called from inside another
                inputs[index] = hidden.numel() * hidden.element_size()
                current[0] = index
        return hook

    def leave(index: int):
        def hook(*_):
            if current[0] == index:
                current[0] = None
        return hook

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in params and id(base) not in kept:
            kept[id(base)] = (base, current[0])
        return tensor

    handles = [h for i, layer in enumerate(layers) for h in (
        layer.register_forward_pre_hook(enter(i), with_kwargs=True),
        layer.register_forward_hook(leave(i)))]
    try:
        with torch.device("meta"):
            batch = {"input_ids": torch.zeros(examples, text_length, dtype=torch.long),
                     "label_ids": torch.zeros(examples, 2, dtype=torch.long),
                     "labels": torch.zeros(examples, dtype=torch.long)}
            if memory.kind == "seq2seq":
                batch["target_ids"] = torch.zeros(examples, target_length, dtype=torch.long)
            prompts = torch.zeros(examples, prompt_length, backbone.hidden_size,
                                  dtype=dtype_of(memory.precision), requires_grad=True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), \
                _FusedAttention(padding):
            backbone.loss(prompts, batch)
    finally:
        for handle in handles:
            handle.remove()
    by_layer = [0.0] * len(layers)
    outside = 0.0
    for tensor, layer in kept.values():
        size = tensor.numel() * tensor.element_size()
        if layer is None:
            outside += size
        else:
            by_layer[layer] += size
    return Saved(outside + sum(by_layer), max(by_layer, default=0.0), sum(inputs), outside)


class _FusedAttention(TorchFunctionMode):
    """On the meta device, scaled-dot-product attention falls back to its math form, which
    keeps every head's s x s matrix for the backward; on a GPU (and a CPU) a fused kernel runs,
    which keeps the query, key, value, output and log-sum-exp only. Count the fused kernel: the
    CPU flash kernel keeps those tensors and has a meta implementation. With ``padding``, every
    call gets the mask a padded batch brings (see the module's docstring), allocated as the GPU
    kernel keeps it: padded to `MASK_ALIGNMENT` columns, the call reading a view of it."""

    def __init__(self, padding: bool):
        super().__init__()
        self.padding = padding

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        causal = bool(kwargs.get("is_causal"))
        if kwargs.get("enable_gqa") and key.shape[1] != query.shape[1]:
            repeat = query.shape[1] // key.shape[1]
            key, value = (t.repeat_interleave(repeat, 1) for t in (key, value))
        if self.padding:
            heads = 1 if mask is None else mask.shape[1]
            columns = -(-key.shape[2] // MASK_ALIGNMENT) * MASK_ALIGNMENT
            padded = torch.empty(query.shape[0], heads, query.shape[2], columns,
                                 dtype=query.dtype, device=query.device)
            mask, causal = padded[..., :key.shape[2]], False
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, is_causal=causal, attn_mask=mask, scale=kwargs.get("scale"))[0]
