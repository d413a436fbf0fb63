"""Loads are checked, not trusted: every frozen-model load is compared with its checkpoint's
own tensors, and its ties come from the checkpoint. The model is the tiny T5 v1.1, saved as the
real google/t5-v1_1-* checkpoints are: an output head of its own, which transformers 5 ties to
the input embeddings under ZeRO-3's partitioned load unless the load is told otherwise."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ptdist.backbones import load_backbone, weights
from ptdist.backbones.presets import preset_dir
from ptdist.distributed.ds_config import load_ds_config
from ptdist.distributed.group import init_distributed
from ptdist.errors import PtdistError
from ptdist.scoring.loading import frozen_model, inference_config
from ptdist.store import Store
from ptdist.training import TrainConfig, train
from tests.conftest import REPO, child_env, zero3_every_tensor_partitioned

MODEL = "tiny-t5-v1_1"


def _stored(name: str) -> torch.Tensor:
    return load_file(preset_dir(MODEL) / "model.safetensors")[name]


def _ds(tmp_path: Path, stage: int, precision: str) -> dict:
    """A one-process inference config of ZeRO ``stage`` (3: every tensor partitioned)."""
    name = str(zero3_every_tensor_partitioned(tmp_path)) if stage == 3 else f"zero{stage}"
    return inference_config(load_ds_config(name)[0], precision, 1)


def test_the_untied_preset_is_saved_as_the_real_t5_v1_1_checkpoints_are():
    stored = load_file(preset_dir(MODEL) / "model.safetensors")
    config = json.loads((preset_dir(MODEL) / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["feed_forward_proj"] == "gated-gelu"
    assert {"shared.weight", "lm_head.weight"} <= stored.keys()
    assert not {"encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} & stored.keys()
    assert not torch.equal(stored["lm_head.weight"], stored["shared.weight"])


@pytest.mark.parametrize("stage,precision", [(None, "fp32"), (0, "bf16"), (3, "fp32"),
                                             (3, "bf16")])
def test_t5_v1_1_keeps_its_own_head_on_every_load_path(tmp_path, stage, precision):
    """One process: plainly, and through `frozen_model` under ZeRO-0 and ZeRO-3 (every tensor
    partitioned: where transformers tied the head to the embeddings)."""
    import deepspeed

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    if stage is None:
        model = load_backbone(MODEL, dtype=dtype).model
        head, embeddings = model.lm_head.weight, model.shared.weight
        assert torch.equal(head, _stored("lm_head.weight").to(dtype))
        assert head is not embeddings
        return
    init_distributed()
    with frozen_model(MODEL, 64, _ds(tmp_path, stage, precision)) as backbone:
        model = backbone.model
        head, embeddings = model.lm_head.weight, model.shared.weight
        assert head is not embeddings
        with deepspeed.zero.GatheredParameters([head]):
            assert torch.equal(head, _stored("lm_head.weight").to(dtype))


def test_a_zero3_model_leaves_the_process_computing_as_before(tmp_path):
    """DeepSpeed's partitioned load swaps in its own ``torch.nn.functional.linear`` for good;
    a later model in the process (a Ray worker's next job) then rounds differently. Before the
    fix, a QA run after a ZeRO-3 test ended at exact match 75 instead of 100."""
    init_distributed()
    before = torch.nn.functional.linear
    layer = torch.nn.Linear(64, 64)
    x = torch.randn(3, 64)
    expected = layer(x)
    with frozen_model(MODEL, 64, _ds(tmp_path, 3, "fp32")):
        pass
    assert torch.nn.functional.linear is before
    assert torch.equal(layer(x), expected)


def test_a_zero3_load_tied_as_transformers_ties_it_is_refused_naming_the_head(tmp_path,
                                                                              monkeypatch):
    """The load as transformers decides the tie under ZeRO-3 (from the empty placeholders):
    the head is the embeddings, and the check refuses it in one line naming it."""
    monkeypatch.setattr("ptdist.backbones.loading.tied_as_stored", lambda cls, _: cls)
    init_distributed()
    with pytest.raises(PtdistError) as refused:
        with frozen_model(MODEL, 64, _ds(tmp_path, 3, "bf16")):
            pass
    message = str(refused.value)
    assert "\n" not in message
    assert (f"model '{MODEL}' did not load as its checkpoint holds it: lm_head.weight (one "
            "tensor with shared.weight") in message
    assert "differs from lm_head.weight of model.safetensors in bfloat16" in message


def _altered_load(monkeypatch, alter) -> None:
    """Loads that pass ``alter`` the model right after from_pretrained: a loader bug."""
    tied = weights.tied_as_stored

    def with_bug(cls, checkpoint):
        base = tied(cls, checkpoint)

        class Altered(base):
            @classmethod
            def from_pretrained(klass, *args, **kwargs):
                model, info = super().from_pretrained(*args, **kwargs)
                with torch.no_grad():
                    alter(model)
                return model, info

        return Altered

    monkeypatch.setattr("ptdist.backbones.loading.tied_as_stored", with_bug)


def _swap_query_and_key(model) -> None:
    attention = model.encoder.block[1].layer[0].SelfAttention
    query = attention.q.weight.clone()
    attention.q.weight.copy_(attention.k.weight)
    attention.k.weight.copy_(query)


def _one_ulp(model) -> None:
    weight = model.decoder.block[0].layer[2].DenseReluDense.wo.weight
    weight[3, 5] = torch.nextafter(weight[3, 5], torch.tensor(float("inf"), dtype=weight.dtype))


@pytest.mark.parametrize("alter,named,dtype", [
    (_swap_query_and_key, "encoder.block.1.layer.0.SelfAttention.q.weight", torch.float32),
    (_one_ulp, "decoder.block.0.layer.2.DenseReluDense.wo.weight", torch.bfloat16)])
def test_a_load_that_altered_a_tensor_is_refused_naming_it(monkeypatch, alter, named, dtype):
    """A swap of two tensors of one shape, and one element off by one unit in the last place
    (in a bf16 load, where T5 keeps ``wo`` in fp32: compared in the dtype the load gave it)."""
    _altered_load(monkeypatch, alter)
    with pytest.raises(PtdistError, match=f"did not load as its checkpoint holds it: {named} "
                                          "differs from"):
        load_backbone(MODEL, dtype=dtype)


def test_a_config_that_unties_a_head_the_files_lack_is_refused(tmp_path):
    """A checkpoint whose config says its head is its own but whose files hold none: the
    loader ties it to the embeddings, a model the checkpoint does not describe."""
    folder = tmp_path / "headless-t5"
    shutil.copytree(preset_dir("tiny-t5"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": False}))
    with pytest.raises(PtdistError, match="its output head is its input embeddings, but the "
                                          "checkpoint's config says tie_word_embeddings: false"):
        load_backbone(str(folder))


def test_a_changed_weight_file_is_refused_where_it_differs_from_the_load(tmp_path, monkeypatch):
    """The file changed between the load and the check (a checkpoint rewritten under a
    running job): the check reads the file, not what the loader kept of it."""
    folder = tmp_path / "rewritten"
    shutil.copytree(preset_dir(MODEL), folder)
    check = weights.check_load

    def rewrite_then_check(model, checkpoint, missing, fitted=None):
        stored = load_file(folder / "model.safetensors")
        stored["encoder.final_layer_norm.weight"] = stored["encoder.final_layer_norm.weight"] * 2
        save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
        return check(model, checkpoint, missing, fitted)

    monkeypatch.setattr("ptdist.backbones.loading.check_load", rewrite_then_check)
    with pytest.raises(PtdistError, match="encoder.final_layer_norm.weight differs from"):
        load_backbone(str(folder))


def _pickled_copy(folder: Path, tensors: dict[str, torch.Tensor]) -> Path:
    """The preset as a checkpoint of ``pytorch_model.bin`` only (as the hub's T5 v1.1 ships)."""
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(preset_dir(MODEL) / name, folder / name)
    torch.save(tensors, folder / "pytorch_model.bin")
    return folder


def test_a_pickled_checkpoint_loads_untied_and_checked(tmp_path):
    stored = load_file(preset_dir(MODEL) / "model.safetensors")
    folder = _pickled_copy(tmp_path / "pickled", stored)
    backbone = load_backbone(str(folder))
    assert torch.equal(backbone.model.lm_head.weight, stored["lm_head.weight"])
    assert backbone.model.lm_head.weight is not backbone.model.shared.weight


def test_a_damaged_pickled_checkpoint_is_refused_in_one_line(tmp_path):
    stored = load_file(preset_dir(MODEL) / "model.safetensors")
    stored["lm_head.weight"] = stored["shared.weight"].clone()  # the mis-tie, written down
    with pytest.raises(PtdistError, match="its output head is its input embeddings"):
        load_backbone(str(_pickled_copy(tmp_path / "tied", stored)))
    garbage = _pickled_copy(tmp_path / "garbage", {})
    (garbage / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(PtdistError, match="cannot read weight file .*pytorch_model.bin"):
        load_backbone(str(garbage))


def test_the_load_line_says_what_was_checked(capsys):
    load_backbone(MODEL)
    line = [x for x in capsys.readouterr().err.splitlines() if "[ptdist] loaded" in x][-1]
    assert f"loaded {MODEL}: T5ForConditionalGeneration" in line
    assert "52 tensors equal the checkpoint's" in line


def _history(store: Store, prompt_id: str) -> list[float]:
    return [h["loss"] for h in store.prompts.manifest(prompt_id).history if h["loss"] is not None]


@pytest.mark.slow
def test_the_untied_t5_trains_to_one_prompt_under_zero0_zero3_and_a_zero3_group(
        tmp_path, sentiment_dir):
    """The same run three ways: one process under ZeRO-0 and under ZeRO-3 (every tensor
    partitioned), and a 2-worker ZeRO-3 Ray Train group under `ptdist sweep`. One prompt id,
    one prompt, one loss history: the group stores the global batch's loss, not rank 0's."""
    zero3 = str(zero3_every_tensor_partitioned(tmp_path))
    run = dict(model=MODEL, task="sst2", steps=6, eval_every=3, prompt_length=4, batch_size=8,
               lr=0.1, eval_limit=16, data_dir=str(sentiment_dir))
    zero0_store, zero3_store = Store(tmp_path / "zero0"), Store(tmp_path / "zero3")
    zero0 = train(TrainConfig(**run), zero0_store)
    one_zero3 = train(TrainConfig(**run, ds_config=zero3), zero3_store)
    assert one_zero3.prompt_id == zero0.prompt_id
    # ZeRO-3 runs a linear layer as its own matmul (another summation order): equal up to
    # float rounding, as the two ranks of the group below.
    torch.testing.assert_close(zero3_store.prompts.tensor(zero0.prompt_id),
                               zero0_store.prompts.tensor(zero0.prompt_id), atol=1e-5, rtol=0)
    torch.testing.assert_close(_history(zero3_store, zero0.prompt_id),
                               _history(zero0_store, zero0.prompt_id), atol=1e-4, rtol=1e-5)

    spec = tmp_path / "group.yaml"
    train_settings = {k: v for k, v in run.items() if k not in ("model", "task", "data_dir")}
    spec.write_text(json.dumps({
        "name": "group", "storage_path": str(tmp_path / "group"), "data_dir": str(sentiment_dir),
        "tasks": ["sst2"], "train": train_settings,
        "models": {MODEL: {"resources": {"workers": 2, "cpus": 0.5}, "ds_config": zero3}}}))
    proc = subprocess.run([sys.executable, "-m", "ptdist", "sweep", "--spec", str(spec)],
                          cwd=REPO, env=child_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    group = Store(tmp_path / "group")
    manifest = group.prompts.manifest(zero0.prompt_id)
    assert manifest.world_size == 2 and manifest.zero_stage == 3
    # Two ranks each reduce half of a batch: the same numbers up to float rounding. The
    # losses are the global batch's (rank 0's own micro-batch loss, stored before, fails this).
    torch.testing.assert_close(group.prompts.tensor(zero0.prompt_id),
                               zero0_store.prompts.tensor(zero0.prompt_id), atol=1e-5, rtol=0)
    torch.testing.assert_close(_history(group, zero0.prompt_id),
                               _history(zero0_store, zero0.prompt_id), atol=1e-4, rtol=1e-5)


# Two ranks load the T5 partitioned, as transformers ties it under ZeRO-3 (the head is the
# embeddings), and say what the check did.
TWO_RANKS = """
import sys
from pathlib import Path
import ptdist.backbones.loading as loading
from ptdist.errors import PtdistError
from ptdist.distributed.group import Shard
from ptdist.scoring import load
from ptdist.training.config import TrainConfig

if sys.argv[2] == "mis-tied":
    loading.tied_as_stored = lambda cls, _: cls
try:
    with load("tiny-t5-v1_1", TrainConfig.max_length, "bf16", ds_config=sys.argv[1]):
        said = "loaded"
except PtdistError as exc:
    said = f"refused: {exc}"
# a file per rank: two ranks' long lines on one pipe can interleave
rank = Shard.of_group().rank
Path(sys.argv[3], f"rank{rank}").write_text(f"rank {rank} {said}")
"""


@pytest.mark.slow
def test_two_zero3_ranks_share_the_check_and_refuse_a_mis_tied_load_together(tmp_path):
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    ds = str(zero3_every_tensor_partitioned(tmp_path))
    for case in ("as-stored", "mis-tied"):
        out = tmp_path / case
        out.mkdir()
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
             "2", str(script), ds, case, str(out)], env=child_env(), text=True,
            capture_output=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        said = sorted(path.read_text() for path in out.iterdir())
        if case == "as-stored":
            assert said == ["rank 0 loaded", "rank 1 loaded"]
            continue
        assert [line[:15] for line in said] == ["rank 0 refused:", "rank 1 refused:"]
        assert said[0][15:] == said[1][15:] and "lm_head.weight (one tensor with" in said[0]
