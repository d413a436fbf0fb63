"""Prompt tuning end to end on tiny presets: learning, idempotence, resume, ZeRO equivalence."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ptdist.backbones import load_backbone
from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.training import TrainConfig, train
from ptdist.training.engine import lr_schedule
from ptdist.training.run import fresh_prompt, plan_run, prompt_id_of
from tests.conftest import (child_env, free_port, has_trained_checkpoint,
                            zero3_every_tensor_partitioned)

REPO = Path(__file__).resolve().parents[1]
LEARN = dict(task="sst2", prompt_length=8, lr=0.1, batch_size=16, eval_limit=None)
T5_V1_1 = "tiny-t5-v1_1"  # its own output head: what a ZeRO-3 load must keep apart


def _cli(*args: str, env_extra: dict | None = None, launcher: list[str] | None = None,
         **kw) -> subprocess.Popen:
    env = child_env(**(env_extra or {}))
    cmd = (launcher or [sys.executable, "-m"]) + ["ptdist", *args]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _json_result(proc: subprocess.Popen, timeout: float = 300) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    # ptdist's JSON is its last line; the deepspeed launcher logs its own lines after it.
    return json.loads([line for line in out.splitlines() if line.startswith("{")][-1])


@pytest.mark.parametrize("model,steps", [("tiny-roberta", 120), ("tiny-t5", 300),
                                         ("tiny-t5-v1_1", 120)])
def test_prompt_tuning_learns_a_learnable_task(tmp_path, sentiment_dir, model, steps):
    config = TrainConfig(model=model, steps=steps, eval_every=steps // 3,
                         data_dir=str(sentiment_dir), **LEARN)
    result = train(config, Store(tmp_path))
    start, first, last = result.history[0], result.history[1], result.history[-1]
    # The starting prompt is evaluated before the first step (no loss yet).
    assert start["step"] == 0 and start["loss"] is None and start["accuracy"] < 80.0
    assert last["loss"] < first["loss"]
    assert result.score >= 80.0, result.history  # chance is 50 %
    store = Store(tmp_path)
    assert store.prompts.tensor(result.prompt_id).shape == (8, 64)
    manifest = store.prompts.manifest(result.prompt_id)
    assert manifest.score == result.score and manifest.task == "sst2"
    assert manifest.best_step in {h["step"] for h in result.history}


def test_the_same_run_is_not_trained_twice(tmp_path, sentiment_dir):
    config = TrainConfig(model="tiny-roberta", steps=4, eval_every=2,
                         data_dir=str(sentiment_dir), **LEARN)
    first = train(config, Store(tmp_path))
    again = train(config, Store(tmp_path))
    assert not first.skipped and again.skipped
    assert again.prompt_id == first.prompt_id and again.score == first.score
    other_seed = train(TrainConfig(**{**config.to_dict(), "seed": 1}), Store(tmp_path))
    assert other_seed.prompt_id != first.prompt_id


def test_the_prompt_id_follows_the_rows_read_not_where_they_lie(tmp_path, sentiment_dir):
    """The same rows in another folder are the same run; other rows are another run, even
    with every setting equal (it used to answer "already in the store" with the old score)."""
    import shutil
    from dataclasses import replace

    from tests.conftest import sentiment_rows, write_jsonl

    store = Store(tmp_path / "store")
    config = TrainConfig(model="tiny-roberta", steps=2, eval_every=2,
                         data_dir=str(sentiment_dir), **LEARN)
    first = train(config, store)
    shutil.copytree(sentiment_dir / "sst2", tmp_path / "moved" / "sst2")
    moved = train(replace(config, data_dir=str(tmp_path / "moved")), store)
    assert moved.skipped and moved.prompt_id == first.prompt_id
    shutil.copytree(sentiment_dir / "sst2", tmp_path / "other" / "sst2")
    write_jsonl(tmp_path / "other" / "sst2" / "train.jsonl", sentiment_rows(256, seed=7))
    other = train(replace(config, data_dir=str(tmp_path / "other")), store)
    assert not other.skipped and other.prompt_id != first.prompt_id
    assert len(store.prompts.manifests()) == 2


def test_early_stopping_and_keep_best(tmp_path, sentiment_dir):
    config = TrainConfig(model="tiny-roberta", steps=400, eval_every=5, patience=2, lr=1.0,
                         data_dir=str(sentiment_dir), task="sst2", prompt_length=8,
                         batch_size=16, eval_limit=None)
    result = train(config, Store(tmp_path))
    assert result.steps_run < 400
    scores = [h["accuracy"] for h in result.history]
    assert result.score == max(scores)
    assert result.steps_run - result.best_step == 2 * 5  # stopped two evaluations after the best


def test_a_diverging_run_stops_with_a_clear_error_and_stores_nothing(tmp_path, sentiment_dir):
    from ptdist.errors import PtdistError

    config = TrainConfig(model="tiny-roberta", steps=6, eval_every=3,
                         data_dir=str(sentiment_dir), **{**LEARN, "lr": 1e30})
    with pytest.raises(PtdistError, match=r"diverged at step \d: the loss is not finite .*"
                                          "nothing of it was stored. Lower the learning rate"):
        train(config, Store(tmp_path))
    assert Store(tmp_path).prompts.manifests() == []
    assert not (tmp_path / "prompts").exists()


def _train_args(store: Path, data: Path, steps: int, *extra: str,
                model: str = "tiny-roberta") -> list[str]:
    return ["train", "--model", model, "--task", "sst2", "--steps", str(steps),
            "--prompt-length", "8", "--lr", "0.1", "--batch-size", "16", "--eval-every", "5",
            "--eval-limit", "0", "--data-dir", str(data), "--store", str(store), "--json",
            *extra]


def _wait_for_a_trained_checkpoint(folder: Path, proc: subprocess.Popen) -> None:
    """Until the run in ``proc`` has checkpointed a trained step, or has ended."""
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not has_trained_checkpoint(folder):
        time.sleep(0.02)


def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, sentiment_dir):
    steps = 40
    reference = _json_result(_cli(*_train_args(tmp_path / "a", sentiment_dir, steps)))

    store_b = tmp_path / "b"
    proc = _cli(*_train_args(store_b, sentiment_dir, steps))
    _wait_for_a_trained_checkpoint(store_b / "runs" / reference["prompt_id"], proc)
    proc.send_signal(signal.SIGKILL)  # a crash: no chance to clean up
    proc.communicate()
    assert not Store(store_b).prompts.has(reference["prompt_id"]), "killed too late"

    resumed = _json_result(_cli(*_train_args(store_b, sentiment_dir, steps)))
    assert resumed["resumed_from"] is not None and 0 < resumed["resumed_from"] < steps
    assert resumed["prompt_id"] == reference["prompt_id"]
    untimed = lambda r: [{k: v for k, v in h.items() if k != "time_s"}  # noqa: E731
                         for h in r["history"]]
    assert untimed(resumed) == untimed(reference)  # same losses and scores at every evaluation
    a = Store(tmp_path / "a").prompts.tensor(reference["prompt_id"])
    b = Store(store_b).prompts.tensor(reference["prompt_id"])
    assert torch.equal(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_a_fresh_preset_cache_under_zero3_builds_whole_weights_and_trains(
        tmp_path, sentiment_dir, processes):
    """Each rank builds the preset itself on an empty cache, before ZeRO-3's zero.Init exists:
    built inside it, the preset would be written with ZeRO-3's empty placeholders and poison
    every later run. The T5 v1.1, whose head of its own ZeRO-3 must keep apart."""
    from safetensors.torch import load_file

    from ptdist.backbones.presets import preset_dir

    cache = tmp_path / "empty-cache"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m"]
    args = _train_args(tmp_path / "store", sentiment_dir, 10, "--ds-config",
                       str(zero3_every_tensor_partitioned(tmp_path)), model=T5_V1_1)
    result = _json_result(_cli(*args, env_extra={"PTDIST_CACHE": str(cache)},
                               launcher=torchrun if processes == 2 else None), timeout=600)
    manifest = Store(tmp_path / "store").prompts.manifest(result["prompt_id"])
    assert manifest.world_size == processes and manifest.zero_stage == 3
    assert result["steps_run"] == 10 and result["history"][-1]["loss"] > 0
    built = load_file(next(cache.glob(f"presets/{T5_V1_1}-v*/model.safetensors")))
    reference = load_file(preset_dir(T5_V1_1) / "model.safetensors")  # no DeepSpeed
    assert built.keys() == reference.keys()
    assert all(torch.equal(built[k], reference[k]) for k in reference)


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and its workers (torchrun puts workers in their own process group)."""
    import psutil

    for child in psutil.Process(proc.pid).children(recursive=True):
        child.kill()
    proc.kill()
    proc.communicate()


@pytest.mark.slow
@pytest.mark.parametrize("killed,resumed", [("zero2", "zero3"), ("zero3", "zero2")])
def test_multi_process_run_resumes_under_another_zero_stage(tmp_path, sentiment_dir, killed,
                                                            resumed):
    """Checkpoints hold Adam's moments whole, so a run killed under one ZeRO stage resumes
    under another; both DeepSpeed restore paths (ZeRO-1/2 fragments, ZeRO-3 partitions) run.
    The ZeRO-2 run that is killed starts under DeepSpeed's own launcher, the others under
    torchrun; what the two processes end with is what one process without DeepSpeed does.
    On the T5 v1.1, whose head of its own every path must load apart."""
    from ptdist.backbones import load_backbone
    from ptdist.training.fingerprint import frozen_fingerprint

    steps = 40
    configs = {"zero2": "zero2", "zero3": str(zero3_every_tensor_partitioned(tmp_path))}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m"]
    deepspeed = [str(Path(sys.executable).with_name("deepspeed")), "--num_gpus", "2",
                 "--master_port", str(free_port()), "--module"]
    reference = _json_result(_cli(*_train_args(tmp_path / "ref", sentiment_dir, steps,
                                               model=T5_V1_1)))
    store = tmp_path / "run"
    proc = _cli(*_train_args(store, sentiment_dir, steps, "--ds-config", configs[killed],
                             model=T5_V1_1), launcher=deepspeed if killed == "zero2" else torchrun)
    _wait_for_a_trained_checkpoint(store / "runs" / reference["prompt_id"], proc)
    _kill_tree(proc)
    assert not Store(store).prompts.has(reference["prompt_id"]), "killed too late"

    result = _json_result(_cli(*_train_args(store, sentiment_dir, steps, "--ds-config",
                                            configs[resumed], model=T5_V1_1),
                               launcher=torchrun), timeout=600)
    assert result["resumed_from"] is not None and 0 < result["resumed_from"] < steps
    manifest = Store(store).prompts.manifest(result["prompt_id"])
    assert manifest.world_size == 2 and manifest.zero_stage == int(resumed[-1])
    ours = Store(store).prompts.tensor(result["prompt_id"])
    ref = Store(tmp_path / "ref").prompts.tensor(reference["prompt_id"])
    # Same global batches; only the order of floating-point reductions differs (measured:
    # ~1e-5 after 40 steps, amplified by Adam).
    assert torch.allclose(ours, ref, atol=1e-4, rtol=0), (ours - ref).abs().max()
    assert manifest.backbone_fingerprint == frozen_fingerprint(load_backbone(T5_V1_1))


def test_generation_task_trains_and_decodes_the_expected_text(tmp_path):
    """QA on T5: trains on the answer text and is scored by greedy decoding with SQuAD EM/F1.
    The answer is the same word for every question, which a prompt on the frozen random tiny
    T5 learns (measured at lr 0.3 over 200 steps: EM 0 up to step 80, 100 from step 160; the
    init drawn from the seed alone, before issue 26, got there by step 80), so the decoded text
    must be exactly that word."""
    from ptdist.tasks import get_task, load_split
    from ptdist.scoring import load, predict
    from tests.conftest import write_jsonl

    rows = [{"question": f"what is {w}", "context": f"the answer is {w}",
             "answers": {"text": ["good"], "answer_start": [0]}}
            for w in ["good", "bad", "movie", "story", "music", "plot", "scene", "film"]]
    data = tmp_path / "data"
    write_jsonl(data / "squad" / "train.jsonl", rows * 4)
    write_jsonl(data / "squad" / "eval.jsonl", rows)
    config = TrainConfig(model="tiny-t5", task="squad", steps=200, eval_every=40,
                         prompt_length=4, batch_size=8, lr=0.3, max_new_tokens=4,
                         eval_limit=None, data_dir=str(data))
    store = Store(tmp_path / "store")
    result = train(config, store)
    assert result.metric == "f1" and set(result.metrics) == {"f1", "exact_match"}
    assert [h["step"] for h in result.history] == [0, 40, 80, 120, 160, 200]
    assert result.history[1]["exact_match"] < 50.0 and result.metrics["exact_match"] == 100.0
    prompt = store.prompts.tensor(result.prompt_id)
    task = get_task("squad")
    with load("tiny-t5", TrainConfig.max_length) as backbone:
        [decoded] = predict(backbone, lambda n: prompt.expand(n, -1, -1), task,
                            load_split(task, "eval", data_dir=str(data)).to_list(), 8, 4)
    assert decoded == ["good"] * len(rows)


def test_runs_of_one_seed_on_two_tasks_start_from_different_random_prompts(tmp_path):
    """A drawn init (random, vocab) follows the run's seed and task: the same for the same
    pair, another for another task or seed; an init that draws nothing keeps the id it had
    before the rule was hashed."""
    backbone, store = load_backbone("tiny-roberta"), Store(tmp_path)

    def start(**settings) -> torch.Tensor:
        config = TrainConfig(model="tiny-roberta", prompt_length=8, **settings)
        return fresh_prompt(config, plan_run(config, store), backbone)

    for init in ("random", "vocab"):
        sst2 = start(task="sst2", seed=0, init=init)
        assert torch.equal(sst2, start(task="sst2", seed=0, init=init))
        assert not torch.equal(sst2, start(task="imdb", seed=0, init=init))
        assert not torch.equal(sst2, start(task="sst2", seed=1, init=init))
    text = TrainConfig(model="tiny-roberta", task="imdb", init="text:a good film")
    plan = plan_run(text, store)
    assert plan.prompt_id == prompt_id_of(text, plan.task, str(plan.init), plan.precision, {},
                                          None)


def test_the_schedule_is_constant_or_a_linear_decay_after_the_same_warm_up(tmp_path):
    """``schedule`` is a setting of the run: constant holds ``lr`` after the warm-up, linear
    decays it to 0 at the last step. At the value every run had before it was a setting
    (linear) it leaves the prompt id as it was."""
    linear = TrainConfig(model="tiny-roberta", task="sst2", steps=10, warmup_steps=2)
    constant = TrainConfig(**{**linear.to_dict(), "schedule": "constant"})
    assert [lr_schedule(linear)(s) for s in range(10)] == pytest.approx(
        [0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert [lr_schedule(constant)(s) for s in range(10)] == [0.5] + [1.0] * 9
    no_warmup = TrainConfig(**{**constant.to_dict(), "warmup_steps": 0})
    assert {lr_schedule(no_warmup)(s) for s in range(10)} == {1.0}
    task = plan_run(linear, Store(tmp_path)).task
    ids = {c.schedule: prompt_id_of(c, task, "random", "fp32", {}) for c in (linear, constant)}
    assert ids["linear"] != ids["constant"]
    without = {k: v for k, v in linear.to_dict().items() if k not in TrainConfig.IMPLICIT}
    assert ids["linear"] == _id_before_schedules(without, task)
    with pytest.raises(PtdistError, match="unknown schedule 'cosine'; use one of: constant"):
        TrainConfig(model="tiny-roberta", task="sst2", schedule="cosine")


@pytest.mark.parametrize("init, prompt_id", [
    ("random", "27260cee7d09441b"), ("vocab", "97e727d306e37ecf"),
    ("text:a good film", "699f7696189dacf8"), ("text:  a good film ", "699f7696189dacf8"),
    ("prompt:{file}", "44170fb9a720f130")])
def test_an_init_keeps_the_prompt_id_it_had_as_a_string(tmp_path, init, prompt_id):
    """The ids ptdist gave these runs when an init was a string (measured at f715933): an
    init as data (`PromptInit`) hashes its written form, and a prompt init its tensor."""
    from ptdist.backbones import parse_init
    from ptdist.store.prompts import write_prompt_file

    file = write_prompt_file(tmp_path / "p.safetensors",
                             torch.arange(8 * 48, dtype=torch.float32).reshape(8, 48) / 100, {})
    written = init.format(file=file)
    for given in (written, parse_init(written)):
        config = TrainConfig(model="tiny-roberta", task="sst2", prompt_length=8, init=given)
        assert plan_run(config, Store(tmp_path / "store")).prompt_id == prompt_id


def _id_before_schedules(settings: dict, task) -> str:
    """The id as ptdist computed it before ``schedule`` and ``optimizer`` were settings."""
    import hashlib

    from ptdist.training.run import _digest, _record_content

    payload = {k: v for k, v in settings.items() if k not in TrainConfig.NOT_HASHED}
    payload.update(task=_digest(_record_content(task)), init="random", precision="fp32")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def test_a_run_keeps_the_prompt_id_and_result_of_the_previous_layout(tmp_path, task_prompts,
                                                                     under_the_lock):
    """The same run as before the store and training core were restructured (commit 0fc1983,
    measured there on this data): the same evaluation losses and score. Its prompt id was
    7391d85713774d95 there (a hash of the settings, the task record and the init); since issue
    16 the id also hashes the content of the local data files the run reads (a run on other
    rows is another run), so it became 7563892905f9a0c4; since issue 18 the built-in sst2
    record also names its standard GLUE files (``source.local``), which is part of the record's
    content, so it became 438a6faddae3d2de. (A record without standard files hashes as before
    ``source.local`` existed: its stored prompts keep their ids.)

    Since issue 26 a random init is drawn from the run's seed and task, not its seed alone
    (`INIT_RULE`), and the id of a run whose init is drawn hashes that rule: this run is now
    5bc8415875d08209 and starts elsewhere, so its numbers moved (losses 0.6037054062 and
    0.5680209994, score 68.75 under the old rule). Issue 26 also moved a run alone onto the
    training code of packed runs; with the old rule's init that code gives the old losses to
    every digit above (checked when the change was made).

    The losses are compared to 1e-4. Under the lock's versions this machine gives the same
    digits on every run, but float32 kernels differ between CPUs: three machines gave
    0.5680209994, 0.5680225491 and 0.5680269599 for the old second loss, a spread of 6e-6. A
    change in what the run computes moves it far more: lr 0.1001 instead of 0.1 gave
    0.5698767900 (1.9e-3 away), lr 0.101 gave 0.5855844021."""
    _, data, _ = task_prompts
    config = TrainConfig(model="tiny-roberta", task="sst2", steps=40, eval_every=20,
                         prompt_length=8, batch_size=16, lr=0.1, eval_limit=48,
                         data_dir=str(data))
    result = train(config, Store(tmp_path))
    assert result.prompt_id == "5bc8415875d08209"
    assert result.score == pytest.approx(100 * 34 / 48)
    # Evaluating the starting prompt (step 0, no loss yet) changes no update.
    assert result.history[0]["loss"] is None
    assert [h["loss"] for h in result.history[1:]] == pytest.approx(
        [0.5960181355, 0.5322319269], abs=1e-4)
