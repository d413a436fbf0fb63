"""The report on a synthetic store whose transfer is known: its findings are worded from the
intervals, and a task whose own prompts sit at the majority rate is flagged and left out."""

from __future__ import annotations

import re

import pyarrow.parquet as pq
import pytest
import torch

from ptdist.orchestration.runs import plan_sweep
from ptdist.orchestration.study import load_study
from ptdist.reporting.report import write_report
from ptdist.store import Store
from ptdist.store.results import CorrelationRow, MatrixRow
from ptdist.store.tables import write_records
from ptdist.tasks import get_task
from tests.test_store import manifest

MODEL = "tiny-roberta"
TASKS = ["sst2", "imdb", "qnli", "mnli"]  # two sentiment, two NLI tasks
OWN, CHANCE = 80.0, 50.0
SHIFT = {"sst2": 2.0, "imdb": -2.0, "qnli": 1.0, "mnli": 0.0}


def _study(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(f"name: synthetic\nstorage_path: {tmp_path / 'store'}\n"
                    f"tasks: [{', '.join(TASKS)}]\nseeds: [0, 1]\n"
                    f"models: {{{MODEL}: {{}}}}\n")
    return load_study(path)


def _matrix(store: Store, sources: dict[tuple[str, int], str]) -> list[MatrixRow]:
    """Known transfer: about 90 % between tasks of a type, 30 % across types (each source
    task shifts its cells by SHIFT, a seed by +-1); chance-normalised 20 / 80 within sentiment
    and 40 / 60 across, so that view overlaps. MNLI's own prompts score the majority rate: not
    clearly above it."""
    rows = []
    for target in TASKS:
        for (task, seed), pid in sources.items():
            same = get_task(task).type == get_task(target).type
            own = task == target
            relative = 100.0 if own else \
                (90.0 if same else 30.0) + SHIFT[task] + (1 if seed else -1)
            normalized = 100.0 if own else (
                {"imdb": 20.0, "sst2": 80.0}.get(task, 50.0) if same else 40.0 + 20 * seed)
            lazy = own and target == "mnli"
            rows.append(MatrixRow(
                model=MODEL, source_task=task, source_type=get_task(task).type,
                source_prompt=pid, source_seed=seed, target_task=target,
                target_type=get_task(target).type, metric="accuracy",
                score=CHANCE if lazy else OWN * relative / 100, own_score=OWN,
                relative=relative, chance=CHANCE, normalized=normalized, random_score=48.0,
                eval_examples=200, above_chance_low=(-1.5 if lazy else 20.0) if own else None,
                above_random_low=(1.0 if lazy else 25.0) if own else None,
                clearly_above=(not lazy) if own else None))
    return rows


def _correlations() -> list[CorrelationRow]:
    def row(name, rho, low, high):
        return CorrelationRow(model=MODEL, indicator=name, spearman_per_target=rho,
                              per_target_low=low, per_target_high=high, targets=3,
                              spearman_global=rho / 2, global_low=low / 2,
                              global_high=high / 2, pairs=12, left_out="mnli")

    return [row("D_avg", 0.1, -0.1, 0.2), row("E_concat", 0.5, 0.3, 0.7),
            row("ON", 0.6, 0.4, 0.8)]


@pytest.fixture
def report(tmp_path):
    study = _study(tmp_path)
    store = Store(study.spec.storage_path)
    sources = {}
    for run, pid in plan_sweep(study.spec, store):
        config = run.config
        task = get_task(config.task)
        prompt = torch.zeros(4, 64)
        store.prompts.put(prompt, manifest(pid, prompt, task=task.name, task_type=task.type,
                                           seed=config.seed, score=OWN + config.seed))
        sources[(task.name, config.seed)] = pid
    write_records(store.layout.matrix(MODEL), MatrixRow, _matrix(store, sources))
    write_records(store.layout.correlation(MODEL), CorrelationRow, _correlations())
    path = write_report(study, [])
    return path.read_text(), path.parent


def test_findings_are_stated_from_the_intervals(report):
    text, folder = report
    findings = text.split("## Findings")[1].split("## Prompt tuning")[0]
    # MNLI is left out: 2 counted same-type pairs (sst2 -> imdb 92, imdb -> sst2 88) and 4
    # cross-type ones (sst2 -> qnli 32, imdb -> qnli 28, qnli -> sst2 and -> imdb 31).
    found = re.search(r"relative zero-shot transfer between tasks of the same type is 90.00 "
                      r"\[(\S+), (\S+)\] % \(2 task pairs\), across types 30.50 \[(\S+), "
                      r"(\S+)\] % \(4 pairs\): same-type transfer is higher than cross-type\.",
                      findings)
    same_low, same_high, cross_low, cross_high = map(float, found.groups())
    assert (same_low, same_high) == (88.0, 92.0)  # the mean of 2 values: their range
    assert 28.0 <= cross_low < 30.5 < cross_high <= 32.0
    assert ("chance-normalised zero-shot transfer between tasks of the same type is 50.00 "
            "[20.00, 80.00] % (2 task pairs), across types 50.00 [50.00, 50.00] % (4 pairs): "
            "same-type transfer is not distinguishable from cross-type.") in findings
    assert "tiny-roberta: 6 of 12 task pairs left out (involving mnli)." in findings
    assert ("the indicator that best predicts zero-shot transfer is ON (0.60 [0.40, 0.80], 3 "
            "targets); it is not distinguishable from E_concat (overlapping intervals). ON "
            "ranks 1 of 3") in findings
    estimates = {r["quantity"]: r for r in pq.read_table(folder / "estimates.parquet")
                 .to_pylist()}
    same = estimates["same-type relative transfer"]
    assert (same["estimate"], same["low"], same["high"], same["n"]) == (90.0, 88.0, 92.0, 2)


def test_a_prompt_at_its_majority_rate_is_flagged_and_left_out(report):
    text, _ = report
    findings = text.split("## Findings")[1].split("## Prompt tuning")[0]
    assert ("⚠ tiny-roberta: the own prompts of mnli are not clearly above the majority class "
            "and a random prompt; no finding below counts their rows.") in findings
    prompts = text.split("## Prompt tuning")[1].split("## Zero-shot")[0]
    mnli = next(line for line in prompts.splitlines() if line.startswith("| tiny-roberta | mnli"))
    # two seeds: 80 and 81, on the matrix's rows at the majority class (50), flagged
    assert "| 80.5 ± 0.7 | 2 | 50.0 | 50.0 | 48.0 | ⚠ no (-1.5 / +1.0) |" in mnli
    sst2 = next(line for line in prompts.splitlines() if line.startswith("| tiny-roberta | sst2"))
    assert sst2.endswith("| yes (+20.0 / +25.0) |")
    cells = text.split("## Zero-shot transfer")[1]
    assert "| mnli | qnli | yes | 90.0 ± 1.4 | 50.0 ± 0.0 | ⚠ no |" in cells
    assert "| sst2 | imdb | yes | 92.0 ± 1.4 | 80.0 ± 0.0 | yes |" in cells
