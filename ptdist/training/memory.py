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
  example; T5's position bias is one [heads, s, s] tensor).
- **optimizer**: the prompt's gradient and AdamW state (two fp32 moments, and under bf16 an
  fp32 master and gradient); the state is split over the n GPUs from ZeRO-1 on.
- **workspace**: the gradients flowing back through one layer: as large as what the largest
  layer keeps.

A placement fits when the total is within `USABLE` of the card (the CUDA context and the
allocator's fragmentation take the rest). The cheapest is the fewest GPUs: one GPU per run
(ZeRO-0) when the frozen model and its activations fit, with activation checkpointing if that
is what makes them fit; ZeRO-3 over 2, 4, 8 GPUs of one node only when they do not.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache

import torch
from torch.overrides import TorchFunctionMode

from ptdist.backbones import dtype_of, model_config, model_kind, random_model
from ptdist.errors import PtdistError

USABLE = 0.9
# GPU memory in GB by Ray's accelerator type (what `resources.accelerator_type` names). Ray
# names an A100 "A100" whatever its memory: the table takes the 80 GB card of cluster.yaml.
GPU_MEMORY_GB = {"T4": 16, "V100": 16, "A10G": 24, "L4": 24, "L40S": 48, "A100-40G": 40,
                 "A100": 80, "A100-80G": 80, "H100": 80, "H200": 141, "B200": 180}
DEFAULT_GPU = "A100"
GB = 1e9


@dataclass(frozen=True)
class RunShape:
    """What a run's memory depends on, besides its model: all per forward of one GPU."""

    precision: str  # bf16 | fp32
    micro_batch: int  # examples per GPU per forward
    prompt_length: int
    text_length: int  # tokens of text, specials included (TrainConfig.max_length)
    target_length: int = 4  # decoder tokens (encoder-decoder models): a label word and </s>


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
class Placement:
    gpus: int
    zero_stage: int
    checkpointing: bool
    memory: Memory

    def describe(self) -> str:
        how = "1 GPU, ZeRO-0" if self.gpus == 1 else f"{self.gpus} GPUs of one node, ZeRO-3"
        return how + (", activation checkpointing" if self.checkpointing else "")


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
                      run.target_length)


def model_memory(model: str, precision: str) -> ModelMemory:
    """`ModelMemory`, built once per model and precision."""
    return _model_memory(model, precision)


@lru_cache(maxsize=16)
def _model_memory(model: str, precision: str) -> ModelMemory:
    return ModelMemory(model, precision)


@lru_cache(maxsize=256)
def _saved(memory: ModelMemory, examples: int, prompt_length: int, text_length: int,
           target_length: int) -> Saved:
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
                _FusedAttention():
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
    CPU flash kernel keeps those tensors and has a meta implementation."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not torch.nn.functional.scaled_dot_product_attention:
            return func(*args, **kwargs)
        query, key, value = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        if kwargs.get("enable_gqa") and key.shape[1] != query.shape[1]:
            repeat = query.shape[1] // key.shape[1]
            key, value = (t.repeat_interleave(repeat, 1) for t in (key, value))
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, is_causal=bool(kwargs.get("is_causal")), attn_mask=mask,
            scale=kwargs.get("scale"))[0]


def plan_placement(memory: ModelMemory, run: RunShape, batch_size: int, gpu_gb: float,
                   max_gpus: int = 8) -> Placement | None:
    """The fewest GPUs of ``gpu_gb`` each that hold a run of global batch ``batch_size``
    (``run.micro_batch`` is ignored: it is the batch split over the GPUs), with activation
    checkpointing only if that is what makes it fit; None if not even ``max_gpus`` do."""
    gpus = 1
    while gpus <= max_gpus:
        if batch_size % gpus == 0:
            split = replace(run, micro_batch=batch_size // gpus)
            stage = 0 if gpus == 1 else 3
            for checkpointing in (False, True):
                need = memory.estimate(split, gpus, stage, checkpointing)
                if need.total <= USABLE * gpu_gb * GB:
                    return Placement(gpus, stage, checkpointing, need)
        gpus *= 2
    return None


def gpu_memory_gb(accelerator_type: str | None) -> float:
    """The memory of one GPU of ``accelerator_type`` (default: `DEFAULT_GPU`)."""
    kind = accelerator_type or DEFAULT_GPU
    if kind not in GPU_MEMORY_GB:
        raise PtdistError(f"the memory of a {kind} GPU is not known to the planner; use one "
                          f"of: {', '.join(GPU_MEMORY_GB)}")
    return GPU_MEMORY_GB[kind]
