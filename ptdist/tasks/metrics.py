"""Task metrics, all as percentages in [0, 100].

Classification metrics take class indices. "f1" is the binary F1 of the positive class
(``classes[1]``), as GLUE scores MRPC and QQP. Generation metrics take strings: SQuAD-style
exact match and token F1 (best over the references), and ROUGE F-measures.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ptdist.tasks.record import TaskRecord

CLASSIFICATION_METRICS = ("accuracy", "f1", "macro_f1", "macro_recall")
GENERATION_METRICS = ("exact_match", "f1", "rouge1", "rouge2", "rougeL")
ROUGE_METRICS = ("rouge1", "rouge2", "rougeL")


def compute_metrics(task: "TaskRecord", predictions: list, references: list) -> dict[str, float]:
    """Every metric the task declares, in percent. Classification: predictions and references
    are class indices. Generation: predictions are strings, references lists of strings."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    if not predictions:
        raise ValueError("no predictions to score")
    if task.kind == "classification":
        scores = _classification(task.metrics, list(predictions), list(references))
    else:
        refs = [[r] if isinstance(r, str) else list(r) for r in references]
        scores = _generation(task.metrics, [str(p) for p in predictions], refs)
    return {name: scores[name] for name in task.metrics}


def _classification(names: Sequence[str], preds: list[int], refs: list[int]) -> dict[str, float]:
    scores: dict[str, float] = {}
    if "accuracy" in names:
        scores["accuracy"] = 100.0 * sum(p == r for p, r in zip(preds, refs)) / len(refs)
    if "f1" in names:
        scores["f1"] = 100.0 * _f1_of_class(1, preds, refs)
    if "macro_f1" in names:
        # Classes seen in either list, as sklearn's f1_score(average="macro") does by default.
        labels = sorted(set(refs) | set(preds))
        scores["macro_f1"] = 100.0 * sum(_f1_of_class(c, preds, refs) for c in labels) / len(labels)
    if "macro_recall" in names:
        # Recall is undefined for a class with no gold examples, so average over gold classes.
        labels = sorted(set(refs))
        recalls = [sum(p == c for p, r in zip(preds, refs) if r == c) / refs.count(c)
                   for c in labels]
        scores["macro_recall"] = 100.0 * sum(recalls) / len(recalls)
    return scores


def _f1_of_class(positive: int, preds: list[int], refs: list[int]) -> float:
    tp = sum(p == positive and r == positive for p, r in zip(preds, refs))
    fp = sum(p == positive and r != positive for p, r in zip(preds, refs))
    fn = sum(p != positive and r == positive for p, r in zip(preds, refs))
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def _generation(names: Sequence[str], preds: list[str], refs: list[list[str]]) -> dict[str, float]:
    scores: dict[str, float] = {}
    n = len(preds)
    pairs = list(zip(preds, refs))
    if "exact_match" in names:
        scores["exact_match"] = 100.0 * sum(
            max(normalize_answer(p) == normalize_answer(r) for r in rs) for p, rs in pairs) / n
    if "f1" in names:
        scores["f1"] = 100.0 * sum(max(token_f1(p, r) for r in rs) for p, rs in pairs) / n
    wanted = [m for m in ROUGE_METRICS if m in names]
    if wanted:
        from rouge_score import rouge_scorer  # imported here: it pulls in nltk, slow to load

        scorer = rouge_scorer.RougeScorer(wanted, use_stemmer=True)
        totals = dict.fromkeys(wanted, 0.0)
        for p, rs in pairs:
            for m, score in scorer.score_multi(rs, p).items():
                totals[m] += score.fmeasure
        scores.update({m: 100.0 * total / n for m, total in totals.items()})
    return scores


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lowercase, drop punctuation, drop the articles a/an/the,
    and collapse whitespace."""
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """Bag-of-tokens F1 between normalised answers, in [0, 1]."""
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        # An empty answer only matches an empty answer (SQuAD 2.0's convention).
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)
