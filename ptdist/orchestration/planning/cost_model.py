"""The cost model: what a prompt-tuning step computes and moves, and how long it takes on a card.

**FLOPs** are counted, not modelled: the run's loss is run forward and backward on the meta
device (the model built from its config, no weights, one example at the run's prompt, text and
target lengths) under PyTorch's `FlopCounterMode`, which counts the matmuls by their shapes
(2 x m x n x k each; attention's products; an embedding lookup is not a matmul and counts
nothing). So the encoder/decoder split is the model's own: a T5 encoder token passes the
encoder once and, in every decoder layer, the cross-attention's key and value projections; a
decoder step passes the decoder and the vocabulary head once. Classification trains the
decoder on its target (a label word and </s>: 1-2 steps) and evaluates it on one step (the
label words' logits at the first step), never on every encoder token. The backward goes to
the prompt only: the frozen weights get no gradient, so each matmul's backward is its input
gradient, about its forward again. Activation checkpointing runs each layer's forward once
more in the backward: recomputation, counted as cost but not as useful work.

**Communication** under ZeRO-3 over ``n`` GPUs: each layer's weights are all-gathered for the
forward and again for the backward (and for the recomputed forward when checkpointing), at
every micro-step; each GPU receives (n - 1) / n of the model's bytes per gather over its link
(the card's datasheet bandwidth, one direction). Gradients are reduce-scattered only for what
trains, the prompt (fp32). Time = bytes / bandwidth, not overlapped with compute: an upper
bound (DeepSpeed prefetches the next layer while one computes).

**Time** = FLOPs / (the card's dense peak x `UTILISATION`) + communication.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch

from ptdist.backbones import dtype_of
from ptdist.training.hardware import Card
from ptdist.training.memory import ModelMemory, model_memory

# The fraction of a card's dense peak a prompt-tuning step is assumed to reach. An assumption,
# not a measurement: benchmarks/gpu_check.py measures it (its MFU column) on the first GPU it
# runs on; until then the estimate's times carry this factor.
UTILISATION = 0.3
PROMPT_GRAD_BYTES = 4  # the prompt's gradient is reduced in fp32 (DeepSpeed's master copy)
# A micro-step whose matmuls take at least this long (at `UTILISATION` of the card's peak) keeps
# the card busy by itself: what a micro-step costs besides its matmuls (a few thousand kernel
# launches at ~5 us each, the host's dispatch and collate: ~10-20 ms) is then at most ~15 % of
# it, and that is all that running several runs in one forward (a pack) can save, while their
# matmuls queue on one GPU.
FILLS_GPU_S = 0.1


@dataclass(frozen=True)
class Flops:
    """Matmul FLOPs of one example, split by where they run: T5's encoder stack, and the rest
    (its decoder and vocabulary head). An encoder-only model's are all ``encoder``."""

    encoder: float
    decoder: float

    @property
    def total(self) -> float:
        return self.encoder + self.decoder


@dataclass(frozen=True)
class ExampleFlops:
    """One example of a run: its forward, and the backward to the prompt."""

    forward: Flops
    backward: Flops
    encoder_tokens: int
    decoder_tokens: int  # 0 for an encoder-only model

    def train(self, checkpointing: bool = False) -> float:
        """FLOPs of one training example, the recomputed forward included when checkpointing."""
        return self.forward.total * (2 if checkpointing else 1) + self.backward.total

    def useful(self) -> float:
        """FLOPs of one training example that are model work (the recomputation is not)."""
        return self.forward.total + self.backward.total


MODES = ("train", "classify", "generate")


@lru_cache(maxsize=64)
def example_flops(model: str, precision: str, prompt_length: int, text_length: int,
                  target_length: int, mode: str = "train") -> ExampleFlops:
    """FLOPs of one example (see the module's docstring). ``mode``: "train", the training
    loss's forward and backward; "classify", an evaluation forward of classification (the
    label words' logits: one decoder step for T5, the mask position's head for an MLM);
    "generate", the forward of ``target_length`` decoder steps (greedy decoding's matmuls, as
    teacher forcing computes them)."""
    from torch.utils.flop_counter import FlopCounterMode

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    train = mode == "train"
    memory = model_memory(model, precision)
    backbone = memory.backbone
    with torch.device("meta"):
        batch = {"input_ids": torch.zeros(1, text_length, dtype=torch.long),
                 "label_ids": torch.zeros(1, 2, dtype=torch.long),
                 "labels": torch.zeros(1, dtype=torch.long)}
        if memory.kind == "seq2seq":
            batch["target_ids"] = torch.zeros(1, target_length, dtype=torch.long)
        prompt = torch.zeros(1, prompt_length, backbone.hidden_size,
                             dtype=dtype_of(precision), requires_grad=train)
    forward = FlopCounterMode(display=False)
    with forward:
        out = backbone.class_logits(prompt, batch) if mode == "classify" else \
            backbone.loss(prompt, batch).sum()
    backward = FlopCounterMode(display=False)
    if train:
        with backward:
            out.backward()
    decoder_tokens = (1 if mode == "classify" else target_length) \
        if memory.kind == "seq2seq" else 0
    return ExampleFlops(_split(forward, memory), _split(backward, memory),
                        prompt_length + text_length, decoder_tokens)


def _split(counter, memory: ModelMemory) -> Flops:
    """A counter's FLOPs as encoder and the rest (decoder and head), by the module that ran
    them: T5's ``encoder`` stack; an encoder-only model's everything."""
    counts = counter.get_flop_counts()
    total = float(sum(counts.get("Global", {}).values()))
    if memory.kind != "seq2seq":
        return Flops(total, 0.0)
    root = type(memory.backbone.model).__name__
    encoder = float(sum(counts.get(f"{root}.encoder", {}).values()))
    return Flops(encoder, total - encoder)


def fills_gpu(flops: ExampleFlops, micro_batch: int, card: Card, precision: str) -> bool:
    """Whether a micro-batch of ``micro_batch`` examples keeps ``card`` busy (`FILLS_GPU_S`)."""
    return micro_batch * flops.useful() / (card.peak(precision) * UTILISATION) >= FILLS_GPU_S


@dataclass(frozen=True)
class StepTime:
    """Seconds of one optimizer step on one GPU of a run."""

    compute_s: float
    comm_s: float

    @property
    def total(self) -> float:
        return self.compute_s + self.comm_s


def zero3_bytes(parameters: float, bytes_per_parameter: int, gpus: int, micro_steps: int,
                checkpointing: bool, prompt_numel: int) -> float:
    """Bytes one GPU receives per optimizer step under ZeRO-3 over ``gpus`` (0 on one GPU)."""
    if gpus <= 1:
        return 0.0
    share = (gpus - 1) / gpus
    gathers = 3 if checkpointing else 2
    return micro_steps * (gathers * share * parameters * bytes_per_parameter +
                          share * prompt_numel * PROMPT_GRAD_BYTES)


def step_time(flops: ExampleFlops, memory: ModelMemory, card: Card, micro_batch: int,
              micro_steps: int, gpus: int, zero_stage: int, checkpointing: bool,
              prompt_length: int) -> StepTime:
    """One optimizer step of a run on each of its ``gpus``: ``micro_steps`` micro-batches of
    ``micro_batch`` examples per GPU."""
    compute = micro_steps * micro_batch * flops.train(checkpointing)
    moved = zero3_bytes(memory.parameters, memory.bytes, gpus, micro_steps, checkpointing,
                        prompt_length * memory.backbone.hidden_size) if zero_stage == 3 else 0.0
    return StepTime(compute / (card.peak(memory.precision) * UTILISATION),
                    moved / card.link_bytes_s)
