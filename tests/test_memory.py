"""The memory planner: its activation term is what autograd really keeps (with and without the
per-call attention masks of a padded batch), its weight and optimizer terms are DeepSpeed's
estimators', it picks the placement of least compute that fits (accumulation before
checkpointing, one GPU before ZeRO-3 over several), and activation checkpointing is honoured by
training (same prompt, less kept). Measured totals on CPU: benchmarks/memory.py
(docs/scale.md)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ptdist.backbones import load_backbone, model_config, random_model
from ptdist.distributed.ds_config import load_ds_config
from ptdist.orchestration.planning.cost_model import example_flops, step_time
from ptdist.orchestration.planning.placement import plan_placement
from ptdist.store import Store
from ptdist.training import TrainConfig, train
from ptdist.training.engine import frozen_backbone
from ptdist.training.hardware import GB, card
from ptdist.training.memory import RunShape, model_memory

XXL = "google/t5-v1_1-xxl"


def _kept(backbone, prompts, batch) -> int:
    """Bytes autograd keeps for the backward of one loss (each tensor once, no parameters)."""
    params = {id(p) for p in backbone.parameters()}
    kept = {}

    def pack(tensor):
        base = tensor._base if tensor._base is not None else tensor
        if id(base) not in params:
            kept[id(base)] = base
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        backbone.loss(prompts, batch).sum().backward()
    return sum(t.numel() * t.element_size() for t in kept.values())


def _batch(backbone, examples: int, text: int, padded: bool = False) -> dict:
    """Rows of ``text`` words each, or with ``padded`` of 1 to ``text`` words (the batch is
    padded to its longest, which the tokenizer cuts at the backbone's max_length)."""
    rows = [{"text": " ".join(["the movie was good"] * (1 + i * text // examples if padded
                                                        else text)), "label": i % 2}
            for i in range(examples)]
    return backbone.collate(rows, ["good", "bad"])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("model", ["tiny-roberta", "tiny-t5", "tiny-t5-v1_1"])
def test_the_activation_term_is_what_autograd_keeps_on_real_tensors(model, padded):
    real = load_backbone(model, max_length=36)
    batch = _batch(real, 8, 36, padded)
    assert (batch["attention_mask"] == 0).any() == padded
    prompts = torch.randn(8, 12, real.hidden_size, requires_grad=True)
    measured = _kept(real, prompts, batch)
    target = batch["target_ids"].shape[1] if "target_ids" in batch else 4
    # 12 + 36 tokens: a multiple of 8, so the GPU kernel's padded mask is the CPU's own size.
    planned = model_memory(model, "fp32").estimate(
        RunShape("fp32", 8, 12, batch["input_ids"].shape[1], target, padding=padded))
    # measured: 1.00 (MLM) and 1.02-1.03 (T5: the planner's forward keeps T5's position bias
    # at full width); with padding, every attention call's own mask is counted as kept
    assert measured <= planned.activations <= 1.05 * measured


def test_a_padded_batch_costs_t5_xxl_a_mask_per_attention_call_padded_to_8_columns():
    """The issue's number: at batch 32 x (100 + 256) tokens each of the 24 encoder layers keeps
    a [32, 64 heads, 356, 360] bf16 mask (PyTorch's memory-efficient kernel pads 356 to 360)
    instead of a [64, 356, 356] bias: +12.6 GB, plus the decoder's small masks."""
    xxl = model_memory(XXL, "bf16")
    plain, padded = (xxl.saved(RunShape("bf16", 32, 100, 256, padding=flag)).total
                     for flag in (False, True))
    encoder = 24 * (32 * 64 * 356 * 360 - 64 * 356 * 356) * 2
    assert encoder == pytest.approx(12.2e9, rel=0.01)
    assert encoder <= padded - plain <= encoder + 0.2e9


def test_weights_and_optimizer_terms_equal_deepspeeds_estimators():
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    memory = model_memory(XXL, "bf16")
    assert round(memory.parameters / 1e9, 2) == 11.14  # its own head, as the checkpoint's
    run = RunShape("bf16", 4, 100, 256)
    # DeepSpeed assumes every parameter trains; with the optimizer offloaded what it leaves on
    # the GPU is the 16-bit weights: ptdist's weights term.
    _, zero2 = estimate_zero2_model_states_mem_needs(memory.parameters, cpu_offload=True)
    assert memory.estimate(run).weights == zero2
    for gpus in (2, 8):
        _, zero3, _ = estimate_zero3_model_states_mem_needs(
            memory.parameters, memory.largest_layer, num_gpus_per_node=gpus,
            cpu_offload=True, cpu_offload_params=False)
        assert memory.estimate(run, gpus, zero_stage=3).weights == pytest.approx(zero3, abs=1)
    prompt = 100 * 4096
    _, trained = estimate_zero2_model_states_mem_needs(prompt, cpu_offload=False)
    assert memory.estimate(run, 1, zero_stage=2).optimizer == trained


@pytest.mark.parametrize("model", ["tiny-t5-v1_1", "tiny-t5", "tiny-roberta"])
def test_a_model_built_from_its_config_is_tied_as_its_checkpoint_is(model):
    """What the planner and the GPU check build (random weights from the config) has the
    tensors the checkpoint holds: T5 v1.1's head apart from its embeddings, T5's and
    RoBERTa's tied."""
    with torch.device("meta"):
        built = random_model(model, torch.float32)
    loaded = load_backbone(model).model
    assert _own_head(built) == _own_head(loaded) == (model == "tiny-t5-v1_1")
    assert sum(p.numel() for p in built.parameters()) == \
        sum(p.numel() for p in loaded.parameters())


def _own_head(model) -> bool:
    return model.get_output_embeddings().weight is not model.get_input_embeddings().weight


def test_t5_v1_1_xxl_is_planned_with_its_own_head():
    """google/t5-v1_1-xxl's checkpoint holds an lm_head of vocabulary x d_model apart from its
    embeddings: 11.1 B parameters, where transformers' tied T5 has 11.0 B."""
    config = model_config(XXL)
    own_head = config.vocab_size * config.d_model
    parameters = model_memory(XXL, "bf16").parameters
    assert round(parameters / 1e9, 1) == 11.1 and round((parameters - own_head) / 1e9, 1) == 11.0


def test_the_planner_picks_accumulation_over_checkpointing_and_one_gpu_over_zero3():
    xxl = model_memory(XXL, "bf16")
    run = RunShape("bf16", 32, 100, 256)
    a100 = card("A100", 80)
    on_a100 = plan_placement(xxl, run, 32, a100)
    # 22 GB of weights fit an 80 GB card, the activations of 32 examples do not; those of 16
    # do: two micro-steps of 16 cost the FLOPs of one of 32, checkpointing 1.5 times them.
    assert xxl.estimate(run).total > 80 * GB
    assert (on_a100.gpus, on_a100.zero_stage, on_a100.accumulation, on_a100.micro_batch,
            on_a100.checkpointing) == (1, 0, 2, 16, False)
    assert xxl.estimate(run, checkpointing=True).total < 0.9 * 80 * GB  # it fits too
    flops = example_flops(XXL, "bf16", 100, 256, 4)
    checkpointed = step_time(flops, xxl, a100, 32, 1, 1, 0, True, 100)
    assert checkpointed.total / on_a100.step.total == pytest.approx(1.5, abs=0.02)
    small = plan_placement(xxl, run, 32, card("A10G"))  # 24 GB: the weights alone are 22
    assert (small.gpus, small.zero_stage) == (2, 3)
    assert small.memory.weights < 12 * GB
    assert plan_placement(xxl, run, 32, replace(card("L4"), memory_gb=3)) is None  # 8 x 3 GB
    base = plan_placement(model_memory("roberta-base", "bf16"), run, 32, card("L4"))
    assert (base.gpus, base.accumulation, base.checkpointing) == (1, 1, False)


def test_activation_checkpointing_is_honoured_and_changes_nothing_but_memory(tmp_path,
                                                                             sentiment_dir):
    settings = dict(model="tiny-t5-v1_1", task="sst2", steps=6, eval_every=3,
                    prompt_length=8, batch_size=8, lr=0.1, eval_limit=16,
                    data_dir=str(sentiment_dir))
    plain = train(TrainConfig(**settings), Store(tmp_path / "plain"))
    checkpointed = train(TrainConfig(**settings, activation_checkpointing=True),
                         Store(tmp_path / "checkpointed"))
    assert checkpointed.prompt_id == plain.prompt_id  # the same run
    assert torch.equal(Store(tmp_path / "plain").prompts.tensor(plain.prompt_id),
                       Store(tmp_path / "checkpointed").prompts.tensor(plain.prompt_id))
    ds, _ = load_ds_config("zero0")
    kept = {}
    for flag in (False, True):
        with frozen_backbone(TrainConfig(**settings, activation_checkpointing=flag),
                             ds) as backbone:
            batch = _batch(backbone, 8, 48)
            kept[flag] = _kept(backbone, torch.randn(8, 8, 64, requires_grad=True), batch)
    assert kept[True] < kept[False] / 2
