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
from ptdist.store import Store
from ptdist.store.activations import activation_dataset
from ptdist.store.results import MatrixRow
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
from ptdist.store import Store
from ptdist.training.distributed import group_ranks
from ptdist.training.evaluation import inference_backbone
from ptdist.transfer.matrix import MatrixSettings, transfer_matrix

store, data, ds, seen = Store(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
with inference_backbone("tiny-t5-v1_1", ds_config=ds) as backbone:  # what a rank holds
    params = list(backbone.parameters())
    held = {"world": group_ranks()[1], "total": sum(p.ds_numel for p in params),
            "partition": sum(p.ds_tensor.numel() for p in params)}
if group_ranks()[0] == 0:
    json.dump(held, open(seen, "w"))
prompts = store.prompts.manifests()
transfer_matrix(store, prompts, MatrixSettings(eval_limit=None, batch_size=8,
                                                      data_dir=data, ds_config=ds)).rows
for protocol in ("prompt", "data"):
    capture(store, prompts, CaptureSettings(protocol=protocol, examples=5, batch_size=2,
                                            data_dir=data, ds_config=ds))
"""


@pytest.fixture(scope="module")
def t5_prompts(tmp_path_factory) -> tuple[Path, Path]:
    """(store, data folder): a prompt of the tiny T5 v1.1 on each of two tasks (barely
    trained: only their equality across placements is tested)."""
    root = tmp_path_factory.mktemp("sharded")
    data = _two_tasks(root / "data")
    store = Store(root / "store")
    for task in ("sst2", str(data / "topic.yaml")):
        train(TrainConfig(model=MODEL, task=task, steps=2, eval_every=2, prompt_length=4,
                          batch_size=8, lr=0.3, eval_limit=8, data_dir=str(data)), store)
    return root / "store", data


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
    """A store holding ``store``'s prompts only."""
    shutil.copytree(store / "prompts", to / "prompts")
    return Store(to)


def _activations(store: Store) -> dict[tuple[str, str, str], dict]:
    return {(r["prompt_id"], r["protocol"], r["layer_name"]): r
            for r in activation_dataset(store.layout, MODEL).to_table().to_pylist()}


@pytest.mark.slow
def test_two_zero3_ranks_score_and_capture_as_one_process(t5_prompts, tmp_path):
    source, data = t5_prompts
    whole = _copy(source, tmp_path / "whole")
    prompts = whole.prompts.manifests()
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
         "2", str(script), str(sharded.root), str(data), str(ds), str(tmp_path / "seen.json")],
        env=child_env(), text=True, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Two ranks, each holding half of the weights (each tensor's partition is padded).
    held = json.loads((tmp_path / "seen.json").read_text())
    assert held["world"] == 2 and held["total"] / 2 <= held["partition"] < held["total"] * 0.51

    # The matrix: every score and baseline equal (the same predictions, row for row).
    assert read_records(sharded.layout.matrix(MODEL), MatrixRow) == expected
    # The activations: the same prompts, layers and active neurons; the values within 1e-5
    # (a forward of fewer prompts, or a mean summed in another order).
    one, two = _activations(whole), _activations(sharded)
    assert one.keys() == two.keys() and len(one) == 2 * 2 * 2  # prompts x protocols x layers
    for key, row in one.items():
        assert row["states"] == two[key]["states"] and row["examples"] == two[key]["examples"]
        torch.testing.assert_close(torch.tensor(two[key]["values"]),
                                   torch.tensor(row["values"]), atol=1e-5, rtol=0)


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


@pytest.mark.slow
def test_a_matrix_job_on_a_zero3_worker_group_equals_one_process(t5_prompts, tmp_path):
    """`run_matrix` with a 2-worker ZeRO-3 group's resources, on a local Ray: its jobs run on
    Ray Train worker groups (the group left its marks) and store the one-process matrix."""
    from ptdist.orchestration.graph import Execution
    from ptdist.orchestration.spec import Resources
    from ptdist.orchestration.stages import run_matrix

    source, data = t5_prompts
    whole = _copy(source, tmp_path / "whole")
    settings = MatrixSettings(eval_limit=None, batch_size=8, data_dir=str(data))
    expected = transfer_matrix(whole, whole.prompts.manifests(), settings).rows
    sharded = _copy(source, tmp_path / "sharded")
    ds = str(zero3_every_tensor_partitioned(tmp_path))
    result = run_matrix(sharded, sharded.prompts.manifests(),
                        MatrixSettings(eval_limit=None, batch_size=8, data_dir=str(data),
                                       ds_config=ds), Execution(),
                        Resources(workers=2, cpus=0.5))
    assert result.rows == expected
    # A group per target column (a job per target), each with the summary its rank 0 returned.
    marks = [p.name for p in (sharded.root / "ray" / "train").iterdir()]
    assert sum(m.endswith(".started") for m in marks) == 2
    assert sum(m.endswith(".result.json") for m in marks) == 2
