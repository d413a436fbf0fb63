"""Every stage that runs a frozen model runs it in the precision its prompts were trained in
(their manifests; a stage setting may say otherwise) on the device it was given: the zero-shot
matrix, activation capture, the evaluation of one prompt. bf16 on CPU shows the path; the
GPU check (benchmarks/gpu_check.py) runs it on a GPU. (Projector evaluation: test_projection.)"""

from __future__ import annotations

import pytest
import torch

from ptdist.api.prompts import evaluate
from ptdist.neurons.capture import bare_rows, ffn_activations
from ptdist.neurons.collect import CaptureSettings, capture
from ptdist.scoring import EvalSettings, load
from ptdist.store import Store
from ptdist.store.activations import activation_dataset
from ptdist.training import TrainConfig, train
from ptdist.transfer.matrix import MatrixSettings, transfer_matrix
from tests.conftest import model_forwards

BF16 = [("bfloat16", "cpu")]


@pytest.fixture(scope="module")
def bf16_prompts(task_prompts, tmp_path_factory) -> tuple[Store, str]:
    """Two prompts of tiny-roberta trained in bf16 (DeepSpeed's bf16 on CPU)."""
    _, data, _ = task_prompts
    store = Store(tmp_path_factory.mktemp("bf16") / "store")
    for task in ("sst2", str(data / "topic.yaml")):
        train(TrainConfig(model="tiny-roberta", task=task, steps=20, eval_every=10,
                          prompt_length=8, batch_size=16, lr=0.1, eval_limit=32,
                          ds_config="zero0_bf16", data_dir=str(data)), store)
    assert {m.precision for m in store.prompts.manifests()} == {"bf16"}
    return store, str(data)


def test_the_matrix_scores_prompts_in_their_precision_unless_told(bf16_prompts):
    store, data = bf16_prompts
    prompts = store.prompts.manifests()
    with model_forwards() as seen:
        rows = transfer_matrix(store, prompts, MatrixSettings(eval_limit=32, data_dir=data,
                                                              device="cpu")).rows
    assert len(rows) == 4 and set(seen) == set(BF16)
    with model_forwards() as seen:
        transfer_matrix(store, prompts, MatrixSettings(eval_limit=32, data_dir=data,
                                                       precision="fp32"))
    assert set(seen) == {("float32", "cpu")}


def test_capture_reads_activations_in_the_prompts_precision(bf16_prompts):
    store, _ = bf16_prompts
    prompts = store.prompts.manifests()
    with model_forwards() as seen:
        assert capture(store, prompts, CaptureSettings(device="cpu")).captured == 2
    assert set(seen) == set(BF16)
    rows = activation_dataset(store.layout, "tiny-roberta").to_table().to_pylist()
    mine = sorted((int(r["layer"]), r["values"]) for r in rows if r["prompt_id"] == prompts[0].id)
    got = torch.tensor([values for _, values in mine])
    prompt = store.prompts.tensor(prompts[0].id)
    expected = {}
    for precision in ("bf16", "fp32"):
        with load("tiny-roberta", TrainConfig.max_length, precision, "cpu") as backbone:
            batch = backbone.collate(bare_rows(backbone), None)
            expected[precision] = ffn_activations(backbone, prompt[None], batch)[0]
    torch.testing.assert_close(got, expected["bf16"], rtol=0, atol=0)
    assert not torch.allclose(got, expected["fp32"], rtol=0, atol=1e-4)  # bf16 really differs


def test_one_prompt_is_evaluated_in_its_precision(bf16_prompts, tmp_path):
    store, data = bf16_prompts
    sst2 = next(m for m in store.prompts.manifests() if m.task == "sst2")
    scored = EvalSettings(eval_limit=32, data_dir=data)
    with model_forwards() as seen:
        by_id = evaluate("tiny-roberta", sst2.id, "sst2", store=store, settings=scored)
    assert set(seen) == set(BF16)
    assert by_id["accuracy"] == pytest.approx(sst2.score)  # as in training: same precision
    from ptdist.store.prompts import write_prompt_file

    path = write_prompt_file(tmp_path / "p.safetensors", store.prompts.tensor(sst2.id), {})
    with model_forwards() as seen:  # a file has no manifest: fp32 unless told
        evaluate("tiny-roberta", str(path), "sst2", store=store, settings=scored)
    assert set(seen) == {("float32", "cpu")}
