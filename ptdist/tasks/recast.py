"""CoNLL-2003 named entities recast as NLI pairs about entity types, in the manner of DNC's NER
recast (Poliak et al., 2018), the extra NER task of the reference's RoBERTa matrices.

The recipe, for each sentence of a CoNLL file (``token tag ...`` per line, IOB2 tags, a blank
line between sentences) and each entity mention of type PER, LOC or ORG (MISC mentions are
skipped: "miscellaneous" is no type a hypothesis can name):

- premise: the sentence, its tokens joined by spaces;
- an entailed pair: hypothesis "<mention> is <the type's phrase>.", label ``entailment``;
- a not-entailed pair: the same with one of the two other types, drawn by
  ``random.Random(0)`` in file order, label ``not_entailment``.

So every split holds two pairs per PER/LOC/ORG mention, half of each label. Columns: premise,
hypothesis, label.
"""

from __future__ import annotations

import random
from pathlib import Path

from ptdist.errors import PtdistError
from ptdist.files import read_text

TYPES = {"PER": "a person", "LOC": "a location", "ORG": "an organization"}
SEED = 0


def sentences(path: Path) -> list[list[tuple[str, str]]]:
    """(token, tag) lists, one per sentence."""
    out, current = [], []
    for number, line in enumerate(read_text(path, "data file").splitlines(), 1):
        fields = line.split()
        if not fields:
            if current:
                out.append(current)
            current = []
            continue
        if len(fields) < 2:
            raise PtdistError(f"{path} line {number}: expected 'token tag ...', got {line!r}")
        current.append((fields[0], fields[1]))
    if current:
        out.append(current)
    return out


def mentions(sentence: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(mention text, type) of each entity of ``sentence``: a B- tag and the I- tags that
    continue it."""
    found: list[tuple[list[str], str]] = []
    for token, tag in sentence:
        if tag.startswith("B-"):
            found.append(([token], tag[2:]))
        elif tag.startswith("I-") and found and found[-1][1] == tag[2:]:
            found[-1][0].append(token)
    return [(" ".join(tokens), kind) for tokens, kind in found]


def read_conll_nli(path: Path) -> dict[str, list[str]]:
    rng = random.Random(SEED)
    out: dict[str, list[str]] = {"premise": [], "hypothesis": [], "label": []}
    for sentence in sentences(path):
        premise = " ".join(token for token, _ in sentence)
        for mention, kind in mentions(sentence):
            if kind not in TYPES:
                continue
            wrong = rng.choice([t for t in TYPES if t != kind])
            for label, typed in (("entailment", kind), ("not_entailment", wrong)):
                out["premise"].append(premise)
                out["hypothesis"].append(f"{mention} is {TYPES[typed]}.")
                out["label"].append(label)
    return out
