"""Sharded inference: a model partitioned under ZeRO-3 over a process group (2 CPU processes,
gloo) scores the transfer matrix and captures activations as one process holding the whole
model does; a model whose runs are ZeRO-3 groups gets its matrix, capture and projector
evaluation jobs on a group of the same shape."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptdist.neurons.collect import CaptureSettings, capture
from ptdist.projection.config import ProjectorConfig
from ptdist.projection.evaluation import EvalSettings, evaluate_projector
from ptdist.projection.modes import train_projector
from ptdist.store import Store
from ptdist.store.activations import activation_dataset
from ptdist.store.results import MatrixRow, ProjectorEvalRow
from ptdist.store.tables import read_records
from ptdist.training import TrainConfig, train
from ptdist.transfer.matrix import MatrixSettings, transfer_matrix
from tests.conftest import (TOPIC_YAML, TWO_MODEL_SPEC, child_env, keyword_rows, write_jsonl,
                            zero3_every_tensor_partitioned)

MODEL = "tiny-t5-v1_1"  # gated-GELU FFNs, read on the decoder: T5 v1.1's capture sites
EVAL_ROWS = 21  # odd: the second rank's slice is padded
EXAMPLES = 5  # the data protocol's rows: 3 + 2 over two ranks, one padded

# Every rank runs the stage functions on the model partitioned under ZeRO-3.
WORKER = """
import json, sys
from ptdist.neurons.collect import CaptureSettings, capture
from ptdist.projection.evaluation import EvalSettings, evaluate_projector
from ptdist.store import Store
from ptdist.distributed.group import Shard
from ptdist.scoring import load
from ptdist.training.config import TrainConfig
from ptdist.transfer.matrix import MatrixSettings, transfer_matrix

store, data, ds, seen, projector = Store(sys.argv[1]), *sys.argv[2:]
with load("tiny-t5-v1_1", TrainConfig.max_length, "bf16", ds_config=ds) as backbone:
    params = list(backbone.parameters())  # what a rank holds
    held = {"world": Shard.of_group().world, "total": sum(p.ds_numel for p in params),
            "partition": sum(p.ds_tensor.numel() for p in params),
            "dtypes": sorted({str(p.ds_tensor.dtype) for p in params})}
if Shard.of_group().leads:
    json.dump(held, open(seen, "w"))
evaluate_projector(store, projector, ["sst2", data + "/topic.yaml"], store.prompts.manifests(),
                   EvalSettings(eval_limit=None, batch_size=8, data_dir=data, ds_config=ds))
prompts = store.prompts.select("tiny-t5-v1_1")
transfer_matrix(store, prompts, MatrixSettings(eval_limit=None, batch_size=8,
                                                      data_dir=data, ds_config=ds)).rows
for protocol in ("prompt", "data"):
    capture(store, prompts, CaptureSettings(protocol=protocol, examples=5, batch_size=2,
                                            data_dir=data, ds_config=ds))
"""


@pytest.fixture(scope="module")
def t5_prompts(tmp_path_factory) -> tuple[Path, Path, str]:
    """(store, data folder, projector id): a prompt of the tiny T5 v1.1 and of tiny-roberta on
    each of two tasks, and a projector from tiny-roberta's prompts to the T5's (all barely
    trained: only their equality across placements is tested)."""
    root = tmp_path_factory.mktemp("sharded")
    data = _two_tasks(root / "data")
    store = Store(root / "store")
    for model in (MODEL, "tiny-roberta"):
        for task in ("sst2", str(data / "topic.yaml")):
            train(TrainConfig(model=model, task=task, steps=2, eval_every=2, prompt_length=4,
                              batch_size=8, lr=0.3, eval_limit=8, data_dir=str(data)), store)
    projector = train_projector(ProjectorConfig(
        source_model="tiny-roberta", target_model=MODEL, mode="distance", tasks=("sst2",),
        source_prompts=_ids(store, "tiny-roberta"), target_prompts=_ids(store, MODEL),
        hidden=8, steps=5, batch_size=1, eval_every=5), store)
    return root / "store", data, projector.id


def _ids(store: Store, model: str) -> tuple[str, ...]:
    return tuple(m.id for m in store.prompts.select(model, ["sst2"]))


def _two_tasks(data: Path) -> Path:
    """A data folder of sst2 and the user task topic (``data/topic.yaml``)."""
    for task, words, key in (("sst2", ("bad", "good"), "sentence"),
                             ("topic", ("football", "guitar"), "text")):
        write_jsonl(data / task / "train.jsonl", keyword_rows(32, 1, words, key))
        write_jsonl(data / task / "eval.jsonl", keyword_rows(EVAL_ROWS, 2, words, key))
    (data / "topic.yaml").write_text(TOPIC_YAML.format(name="topic", first="sport",
                                                       second="music"))
    return data


def _copy(store: Path, to: Path) -> Store:
    """A store holding ``store``'s prompts and projectors only."""
    for folder in ("prompts", "projectors"):
        shutil.copytree(store / folder, to / folder)
    return Store(to)


def _same_activations(whole: Store, sharded: Store, rows: int) -> None:
    """The same prompts, layers and active neurons; the values within 1e-5 (a forward of fewer
    prompts, or a mean summed in another order, rounds differently)."""
    one, two = ({(r["prompt_id"], r["protocol"], r["layer_name"]): r
                 for r in activation_dataset(s.layout, MODEL).to_table().to_pylist()}
                for s in (whole, sharded))
    assert one.keys() == two.keys() and len(one) == rows
    for key, row in one.items():
        assert row["states"] == two[key]["states"] and row["examples"] == two[key]["examples"]
        torch.testing.assert_close(torch.tensor(two[key]["values"]),
                                   torch.tensor(row["values"]), atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_zero3_ranks_score_and_capture_as_one_process(t5_prompts, tmp_path):
    source, data, projector = t5_prompts
    whole = _copy(source, tmp_path / "whole")
    tasks = ["sst2", str(data / "topic.yaml")]
    projected = evaluate_projector(whole, projector, tasks, whole.prompts.manifests(),
                                   EvalSettings(eval_limit=None, batch_size=8,
                                                data_dir=str(data)))
    prompts = whole.prompts.select(MODEL)
    expected = transfer_matrix(whole, prompts, MatrixSettings(eval_limit=None, batch_size=8,
                                                              data_dir=str(data))).rows
    for protocol in ("prompt", "data"):
        capture(whole, prompts, CaptureSettings(protocol=protocol, examples=EXAMPLES,
                                                batch_size=2, data_dir=str(data)))

    sharded = _copy(source, tmp_path / "sharded")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ds = zero3_every_tensor_partitioned(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
         "2", str(script), str(sharded.root), str(data), str(ds), str(tmp_path / "seen.json"),
         projector],
        env=child_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Two ranks, each holding half of the weights (each tensor's partition is padded), in the
    # precision asked.
    held = json.loads((tmp_path / "seen.json").read_text())
    assert held["world"] == 2 and held["total"] / 2 <= held["partition"] < held["total"] * 0.51
    assert held["dtypes"] == ["torch.bfloat16"]
    # Projector evaluation: the same scores, distances and own-prompt scores.
    assert read_records(sharded.layout.projector_eval(projector), ProjectorEvalRow) == projected

    # The matrix: every score and baseline equal (the same predictions, row for row).
    assert read_records(sharded.layout.matrix(MODEL), MatrixRow) == expected
    _same_activations(whole, sharded, 2 * 2 * 2)  # prompts x protocols x layers


# The projector-pair sweep of the tests, its T5 a 2-worker ZeRO-3 group.
STUDY = TWO_MODEL_SPEC.replace("tiny-t5-d96: {{}}", MODEL + ": {{resources: {{workers: 2, "
                               "cpus: 0.5}}, ds_config: zero3}}") + """stages:
  projection: {{mode: distance, train_tasks: [sst2], hidden: 16, steps: 5}}
"""


def test_a_zero3_group_model_gets_its_frozen_model_jobs_on_a_group(tmp_path, capsys):
    """The dry run of a study: the ZeRO-3 group model's matrix, capture and projector
    evaluation (as the target) hold a group of its shape; the other model's one process."""
    from tests.test_cli import run

    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(name="sharded", store=tmp_path / "store",
                                data=_two_tasks(tmp_path / "data")))
    code, out, err = run(capsys, "replicate", "--study", str(study), "--dry-run")
    assert code == 0, err
    jobs = {line.split(" [")[0].strip(): line for line in out.splitlines()
            if line.startswith("  ") and " [" in line}
    group = "1 CPU, 0 GPU (a worker group on one node)"
    for job in (f"matrix {MODEL}", f"capture {MODEL}", f"eval tiny-roberta -> {MODEL}"):
        assert jobs[job].endswith(group), jobs[job]
    for job in ("matrix tiny-roberta", "capture tiny-roberta", f"eval {MODEL} -> tiny-roberta"):
        assert not jobs[job].endswith("(a worker group on one node)"), jobs[job]


def test_shard_flags_are_checked_before_anything_runs(tmp_path, capsys):
    from tests.test_cli import run

    for flags, message in ((["--shard", "0"], "--shard 0: give the number of processes"),
                           (["--shard", "2", "--ds-config", "zero9"],
                            "DeepSpeed config 'zero9' not found")):
        for command in (["transfer", "matrix", "--tasks", "sst2", "imdb"],
                        ["neurons", "capture"]):
            code, _, err = run(capsys, *command, "--model", MODEL, "--store",
                               str(tmp_path / "store"), *flags)
            assert code == 2 and message in err, err


def _group_marks(store: Store) -> tuple[int, int]:
    """How many Ray Train worker groups started, and how many left the summary their rank 0
    returned."""
    marks = [p.name for p in (store.root / "ray" / "train").iterdir()]
    return sum(m.endswith(".started") for m in marks), sum(m.endswith(".result.json")
                                                           for m in marks)


@pytest.mark.slow
def test_capture_on_a_zero3_worker_group_equals_one_process(t5_prompts, tmp_path, capsys):
    """`ptdist neurons capture --shard 2` on a local Ray: its job runs on a Ray Train worker
    group (which left its marks) and stores the one-process activations."""
    from tests.test_cli import run

    source, data, _ = t5_prompts
    whole = _copy(source, tmp_path / "whole")
    capture(whole, whole.prompts.select(MODEL),
            CaptureSettings(protocol="data", examples=EXAMPLES, data_dir=str(data)))
    sharded = _copy(source, tmp_path / "sharded")
    ds = str(zero3_every_tensor_partitioned(tmp_path))
    code, out, err = run(capsys, "neurons", "capture", "--model", MODEL, "--protocol", "data",
                         "--examples", str(EXAMPLES), "--chunks", "1", "--shard", "2", "--cpus",
                         "0.5", "--ds-config", ds, "--data-dir", str(data), "--store",
                         str(sharded.root))
    # capture's counts came from the summary the group's rank 0 returned
    assert code == 0 and "captured 2 prompt(s) (0 already stored)" in out, err
    _same_activations(whole, sharded, 2 * 2)  # prompts x layers
    assert _group_marks(sharded) == (1, 1)


@pytest.mark.slow
def test_matrix_jobs_on_zero3_worker_groups_equal_one_process(t5_prompts, tmp_path):
    """`run_matrix` with a 2-worker ZeRO-3 group's resources on a local Ray: a job per target
    column, each on a worker group, storing the one-process matrix."""
    from ptdist.orchestration.execution.graph import Execution
    from ptdist.orchestration.jobs.stages import run_matrix
    from ptdist.orchestration.spec.sweep_spec import Resources

    source, data, _ = t5_prompts
    whole = _copy(source, tmp_path / "whole")
    settings = MatrixSettings(eval_limit=None, batch_size=8, data_dir=str(data))
    expected = transfer_matrix(whole, whole.prompts.select(MODEL), settings).rows
    sharded = _copy(source, tmp_path / "sharded")
    ds = str(zero3_every_tensor_partitioned(tmp_path))
    result = run_matrix(sharded, sharded.prompts.select(MODEL),
                        MatrixSettings(eval_limit=None, batch_size=8, data_dir=str(data),
                                       ds_config=ds), Execution(),
                        Resources(workers=2, cpus=0.5))
    assert result.rows == expected
    assert _group_marks(sharded) == (2, 2)  # a group per target column
