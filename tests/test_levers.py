"""The levers that spend less compute on prompt tuning (issue 28): length-bucketed training
batches, each task's own cut of its texts, early stopping that spares the runs TPT compares,
and the compiled step. Each is a setting of the run; packing still changes no bit
(tests/test_packed.py runs packs with every lever on)."""

from __future__ import annotations

import logging
import random
from collections import Counter

import numpy as np
import torch

from ptdist.backbones import load_backbone
from ptdist.orchestration.spec.study_spec import load_study
from ptdist.orchestration.spec.sweep_spec import load_spec
from ptdist.store import Store
from ptdist.training import TrainConfig, train
from ptdist.training.checkpoint import TrainState
from ptdist.training.config import hashed_settings
from ptdist.training.data import BatchOrder, global_batch
from ptdist.training.lengths import text_cut
from ptdist.training.run import plan_run
from ptdist.training.tracking import RunTracker, stop_step
from ptdist.transfer.tpt import TptPlan
from tests.conftest import REPO

SMALL = dict(model="tiny-roberta", task="sst2", prompt_length=4, batch_size=8, eval_limit=32)


def _lengths(n: int, seed: int = 3) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, 60) for _ in range(n)]


def _spread(batches: list[list[int]], sizes: list[int]) -> float:
    """Mean (longest - shortest) row of a batch."""
    return float(np.mean([max(sizes[i] for i in b) - min(sizes[i] for i in b) for b in batches]))


def test_bucketed_batches_hold_every_row_once_per_epoch_and_are_seeded():
    """96 rows, batches of 4, windows of 6 batches: the 24 steps of the first epoch hold every
    row once, each window holds the rows its steps hold unbucketed, and a batch holds rows of
    about one length."""
    n, b, window = 96, 4, 6
    sizes = _lengths(n)
    order = BatchOrder(n, b, seed=7, window=window, lengths=lambda rows: [sizes[i] for i in rows])
    batches = [order(step) for step in range(n // b)]
    assert sorted(i for batch in batches for i in batch) == list(range(n))
    for w in range(n // b // window):
        steps = range(w * window, (w + 1) * window)
        assert Counter(i for s in steps for i in order(s)) == \
            Counter(i for s in steps for i in global_batch(s, n, b, 7))
    plain = [global_batch(step, n, b, 7) for step in range(n // b)]
    assert _spread(batches, sizes) < _spread(plain, sizes) / 3
    again = BatchOrder(n, b, seed=7, window=window, lengths=lambda rows: [sizes[i] for i in rows])
    other = BatchOrder(n, b, seed=8, window=window, lengths=lambda rows: [sizes[i] for i in rows])
    assert [again(s) for s in range(40)] == [order(s) for s in range(40)]  # a pure function
    assert [other(s) for s in range(24)] != batches
    # The batches of a window come in a seeded order, not shortest first.
    longest = [max(sizes[i] for i in batch) for batch in batches]
    assert any(longest[w * window:(w + 1) * window] != sorted(longest[w * window:(w + 1) * window])
               for w in range(4))


def test_bucketed_windows_across_epochs_keep_each_rows_frequency():
    """90 rows, so windows straddle epochs: over any whole windows every row comes as often as
    in the unbucketed stream."""
    n, b, window = 90, 4, 5
    sizes = _lengths(n, seed=5)
    order = BatchOrder(n, b, seed=1, window=window, lengths=lambda rows: [sizes[i] for i in rows])
    steps = range(9 * window)
    assert Counter(i for s in steps for i in order(s)) == \
        Counter(i for s in steps for i in global_batch(s, n, b, 1))


def test_a_task_cut_is_its_own_length_quantile_capped_by_the_model():
    backbone = load_backbone("tiny-roberta", max_length=30)
    rows = [{"text": " ".join(["film"] * k)} for k in range(1, 41)]
    sizes = [len(ids) for ids in backbone.tokenizer([r["text"] for r in rows],
                                                    add_special_tokens=False).input_ids]
    assert sizes == sorted(sizes) and sizes[-1] > 28  # longer than the model's budget
    median = text_cut(backbone, rows, 0.5)
    assert median == sizes[19] < 28  # the 20th of 40 lengths
    assert text_cut(backbone, rows, 1.0) == 28  # max_length 30 less the mask and end
    batch = backbone.collate(rows[-2:], ["bad", "good"], median)
    assert batch["input_ids"].shape[1] == median + 2


def test_a_run_with_its_own_cut_trains_on_texts_no_longer_and_records_it(tmp_path,
                                                                         sentiment_dir,
                                                                         monkeypatch):
    from ptdist.backbones.mlm import MaskedLMBackbone

    widths = []
    collate = MaskedLMBackbone.collate

    def recorded(self, rows, words, cut=None):
        batch = collate(self, rows, words, cut)
        if cut is not None:
            widths.append(batch["input_ids"].shape[1] - 2)
        return batch

    monkeypatch.setattr(MaskedLMBackbone, "collate", recorded)
    config = TrainConfig(**SMALL, steps=4, eval_every=4, length_quantile=0.5,
                         data_dir=str(sentiment_dir))
    store = Store(tmp_path)
    result = train(config, store)
    cut = store.prompts.manifest(result.prompt_id).text_cut
    assert cut is not None and widths and max(widths) == cut
    plain = TrainConfig(**{**config.to_dict(), "length_quantile": None})
    assert plan_run(plain, store).prompt_id != result.prompt_id


def test_every_lever_at_its_old_value_keeps_the_prompt_id():
    """A run with the levers off hashes as runs did before they existed; each lever on (they
    change what a run computes) is another run."""
    base = TrainConfig(**SMALL)
    assert not {"min_steps", "bucket_window", "length_quantile", "compile"} & \
        set(hashed_settings(base.to_dict()))
    for name, value in (("min_steps", 50), ("bucket_window", 50), ("length_quantile", 0.99),
                        ("compile", True)):
        on = TrainConfig(**{**base.to_dict(), name: value})
        assert hashed_settings(on.to_dict())[name] == value


def _tracker(patience: int | None, min_steps: int) -> RunTracker:
    return RunTracker(TrainState(), None, None, "accuracy", patience, "run", min_steps)


def _record(tracker: RunTracker, step: int, score: float) -> None:
    tracker.state.step = step
    tracker.record(None, {"accuracy": score}, 0.0, {"w": torch.zeros(1)}, ["w"], save=False)


def test_a_flat_curve_stops_after_its_patience_and_not_before_its_minimum_steps():
    flat = _tracker(patience=2, min_steps=200)
    for step in range(0, 400, 50):
        _record(flat, step, 60.0)
        if flat.stopped:
            break
    assert flat.state.step == 200  # two evaluations without a new best at 100, but step < 200
    rising = _tracker(patience=2, min_steps=0)
    for step, score in enumerate([50.0, 51.0, 53.0, 52.0, 54.0, 54.5]):
        _record(rising, step, score)
        assert not rising.stopped
    resumed = RunTracker.resumed({}, flat.state, None, "accuracy", 2, "run", 200)
    assert resumed.stopped  # a run checkpointed as it stopped does not go on


def test_a_run_stops_early_once_its_curve_is_flat(tmp_path, sentiment_dir):
    """A learning rate too small to move the prompt: its curve is flat from step 0."""
    config = TrainConfig(**SMALL, steps=40, eval_every=5, lr=1e-9, patience=2, min_steps=20,
                         data_dir=str(sentiment_dir))
    result = train(config, Store(tmp_path))
    assert result.steps_run == 20 and result.best_step == 0
    assert Store(tmp_path).prompts.manifest(result.prompt_id).steps == 20


def test_a_finished_curve_replayed_stops_where_the_run_with_patience_stopped(tmp_path,
                                                                             sentiment_dir):
    """`stop_step` (what benchmarks/early_stop.py replays on a study's curves) against training:
    the run with patience stops at the step the same run's full curve predicts."""
    settings = dict(SMALL, steps=60, eval_every=5, lr=0.05, data_dir=str(sentiment_dir))
    store = Store(tmp_path)
    full = store.prompts.manifest(train(TrainConfig(**settings), store).prompt_id)
    curve = [(e["step"], e[full.metric]) for e in full.history]
    predicted = stop_step(curve, patience=2, min_steps=40)
    # The curve dips before step 40 and is flat after 45: the minimum and the patience both count.
    assert 40 < predicted < 60
    stopped = train(TrainConfig(**settings, patience=2, min_steps=40), store)
    assert stopped.steps_run == predicted


def test_the_runs_tpt_compares_run_to_the_end(tmp_path):
    """A study's TPT targets train all their steps whatever its early stopping; every other
    task stops early; the vanilla run of the comparison is the study's own run."""
    study = tmp_path / "study.yaml"
    study.write_text(f"name: s\nstorage_path: {tmp_path / 'store'}\ntasks: [sst2, imdb]\n"
                     "seeds: [0, 1]\ntrain: {steps: 300, patience: 2, min_steps: 150}\n"
                     "models: {tiny-roberta: {}}\n"
                     "stages: {tpt: {targets: [sst2], sources: [imdb]}}\n")
    runs = {(r.config.task, r.config.seed): r.config for r in load_study(study).spec.runs()}
    assert {(t, s): (c.patience, c.min_steps) for (t, s), c in runs.items()} == {
        ("sst2", 0): (None, 0), ("sst2", 1): (None, 0), ("imdb", 0): (2, 150),
        ("imdb", 1): (2, 150)}
    # The study's file swept alone plans the runs its prompt stage plans.
    assert [r.config for r in load_spec(study).runs()] == list(runs.values())
    store = Store(tmp_path / "store")
    plan = TptPlan("tiny-roberta", ("sst2",), (), {"steps": 300, "patience": 2,
                                                   "min_steps": 150}, seeds=(0, 1))
    for _, seed, label, config in plan.runs():
        assert label == "vanilla" and config.patience is None
        assert plan_run(config, store).prompt_id == plan_run(runs["sst2", seed], store).prompt_id


def test_a_compilation_that_fails_says_so_once_and_the_run_steps_eagerly(
        tmp_path, sentiment_dir, monkeypatch, caplog):
    import ptdist.training.compiled as compiled

    def no_compiler(fn, **_):
        def fails(*args, **kwargs):
            raise RuntimeError("no C++ compiler found\nand more lines")
        return fails

    monkeypatch.setattr(compiled.torch, "compile", no_compiler)
    settings = dict(SMALL, steps=4, eval_every=2, data_dir=str(sentiment_dir))
    store = Store(tmp_path)
    with caplog.at_level(logging.WARNING, logger="ptdist.training.compiled"):
        fallen = train(TrainConfig(**settings, compile=True), store)
    lines = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert len(lines) == 1 and "no C++ compiler found" in lines[0] and "\n" not in lines[0]
    eager = train(TrainConfig(**settings), store)
    assert fallen.prompt_id != eager.prompt_id  # compiled is another run...
    assert torch.equal(store.prompts.tensor(fallen.prompt_id),
                       store.prompts.tensor(eager.prompt_id))  # ...that here ran eagerly


def test_paired_scores_finds_a_shift_between_two_reports_and_none_where_there_is_none(tmp_path):
    """benchmarks/paired_scores.py, the check that a lever kept a study's results: a run-by-run
    shift of +2 points (with noise) on one model shows as an interval above 0, the other
    model's unchanged runs as 0 with no interval width, and runs in one report only are left
    out and counted."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    keys = [(m, t, s) for m in ("a", "b") for t in ("x", "y") for s in range(4)]
    before = {k: float(rng.uniform(50, 90)) for k in keys}
    after = {k: v + (2 + rng.normal(0, 0.5) if k[0] == "a" else 0.0) for k, v in before.items()}
    after[("b", "z", 0)] = 70.0
    for name, scores in (("before", before), ("after", after)):
        (tmp_path / name).mkdir()
        rows = [dict(model=m, task=t, seed=s, init="random", score=v)
                for (m, t, s), v in scores.items()]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / name / "prompts.parquet")
    script = REPO / "benchmarks" / "paired_scores.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "before"),
                          str(tmp_path / "after")], text=True, capture_output=True, check=True,
                         timeout=120).stdout
    rows = {line.split("  ")[0].strip(): line for line in out.splitlines()}
    shift = [after[k] - before[k] for k in keys if k[0] == "a"]
    low, high = (float(v) for v in rows["a"].split("[")[1].split("]")[0].split(","))
    assert 0 < low < np.mean(shift) < high
    assert "0.00 [0.00, 0.00]" in rows["b"]
    assert "runs in one report only (left out): 1" in out
