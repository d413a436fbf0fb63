"""Built-in tiny backbones made from configs (random weights), for tests and smoke runs.

A preset is materialised once into a cache folder (config, weights, tokenizer) and then loaded
like any local model folder, so every code path, including DeepSpeed ZeRO-3's partitioned
loading, is the same as for a real checkpoint. Weights come from a fixed seed: every process
and every machine builds the same "tiny-roberta", so prompts trained on it stay comparable.

The init scale is larger than Hugging Face's default: at std 0.02 a 64-wide random network's
output barely depends on its input (label logits moved by ~1e-3 between "good" and "bad"), so
no prompt could learn anything on it. Measured on the test suite's sentiment task (prompt of
8 tokens, Adam lr 0.1): RoBERTa init std 0.02 -> 52 % eval accuracy, 0.2 -> 98 %; T5 v1.0
factor 1.0 -> 48 %, 2.0 -> 84 % (300 steps); T5 v1.1 learns at its default factor (89 %).

A preset is saved as the real checkpoints of its family are: each tensor once, under its
owner's name (T5's embeddings as ``shared.weight``), and ``tiny-t5-v1_1`` with an output head of
its own (``lm_head.weight``) and ``tie_word_embeddings: false``, as every google/t5-v1_1-*
checkpoint: the load paths that must keep such a head apart (ZeRO-3, docs/scale.md) are tested
on it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

# torch and transformers are imported where a preset is built: every command's help lists
# the presets, and must not wait for torch (tests/test_cli_start.py).
from ptdist.runtime import built_once, cache_root

if TYPE_CHECKING:
    import torch

# Bumped whenever a preset's definition changes, so stale caches are never reused.
PRESET_VERSION = 3

# Words the tiny tokenizers learn as whole tokens: common English, and the label words and
# template words the built-in tasks use, so tiny runs tokenize like real ones would.
_WORDS = """
the a an and or but not no yes maybe true false right wrong good bad great terrible awful
excellent fine poor best worst love hate like dislike happy sad positive negative neutral
movie film book food service laptop battery screen restaurant staff price meal story plot
actor acting music scene ending was is are were be been it this that these those they we
i you he she his her their our very really quite too so such more most less least than
question answer context summary dialogue premise hypothesis sentence aspect review tweet
entailment contradiction reasonable unreasonable excuse scenario justice just unjust same
different similar paraphrase duplicate ok okay what who where when why how which does do
did can could would should will of in on at to for with from by about as into over after
before under again then once here there all any both each few other some own only just
one two three four five six seven eight nine ten day time year people way thing man woman
world life work part place case point group number fact hand eye week company system
""".split()

_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
_T5_SENTINELS = [f"<extra_id_{i}>" for i in range(8)]
_T5_SPECIALS = ["<pad>", "</s>", "<unk>", *_T5_SENTINELS]


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str  # "mlm" or "seq2seq"
    description: str
    build_config: Callable[[int], object]  # vocab size -> transformers config
    specials: list[str]
    special_roles: dict[str, str]
    own_head: bool = False  # an output head apart from the input embeddings (T5 v1.1)


def _roberta_config(vocab_size: int):
    from transformers import RobertaConfig

    return RobertaConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=514, type_vocab_size=1,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5,
        initializer_range=0.2,
    )


def _t5_config(feed_forward_proj: str, d_model: int = 64) -> Callable[[int], object]:
    def build(vocab_size: int):
        from transformers import T5Config

        return T5Config(
            vocab_size=vocab_size, d_model=d_model, d_kv=d_model // 4, d_ff=2 * d_model,
            num_layers=2,
            num_decoder_layers=2, num_heads=4, feed_forward_proj=feed_forward_proj,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
            # T5 v1.1's flag: transformers reads it as "no output scaling" and ties anyway
            tie_word_embeddings=feed_forward_proj == "relu",
            initializer_factor=2.0 if feed_forward_proj == "relu" else 1.0,
        )

    return build


_T5_ROLES = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in [
        Preset("tiny-roberta", "mlm", "RoBERTa-shaped MLM: 2 layers, d=64, FFN 128, random weights",
               _roberta_config, _ROBERTA_SPECIALS,
               {"bos_token": "<s>", "cls_token": "<s>", "eos_token": "</s>", "sep_token": "</s>",
                "pad_token": "<pad>", "unk_token": "<unk>", "mask_token": "<mask>"}),
        Preset("tiny-t5", "seq2seq", "T5 v1.0-shaped (ReLU FFN, tied embeddings): 2+2 layers, d=64",
               _t5_config("relu"), _T5_SPECIALS, _T5_ROLES),
        Preset("tiny-t5-v1_1", "seq2seq",
               "T5 v1.1-shaped (gated-GELU FFN, untied head): 2+2 layers, d=64",
               _t5_config("gated-gelu"), _T5_SPECIALS, _T5_ROLES, own_head=True),
        # Another width than the others, as real model pairs have (768 vs 1024...): what
        # cross-model projectors are for.
        Preset("tiny-t5-d96", "seq2seq", "T5 v1.0-shaped like tiny-t5, but d=96, FFN 192",
               _t5_config("relu", d_model=96), _T5_SPECIALS, _T5_ROLES),
    ]
}


def preset_dir(name: str) -> Path:
    """The folder holding preset ``name``, building it on first use (safe under concurrency)."""
    preset = PRESETS[name]
    return built_once(cache_root() / "presets" / f"{name}-v{PRESET_VERSION}",
                      lambda folder: _materialise(preset, folder), marker="config.json")


def _materialise(preset: Preset, folder: Path) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForMaskedLM, AutoModelForSeq2SeqLM

    vocab_size = _train_tokenizer(preset, folder)
    config = preset.build_config(vocab_size)
    auto = AutoModelForMaskedLM if preset.kind == "mlm" else AutoModelForSeq2SeqLM
    # On the CPU whatever device the caller builds on (a plan builds on the meta device).
    with torch.device("cpu"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = auto.from_config(config)
        if preset.own_head:
            _untie_head(model)
    # Not model.save_pretrained: once a process group exists it writes only on rank 0, and
    # every rank of a multi-process run may be the one that builds the preset.
    config.save_pretrained(folder)
    save_file(_stored_once(model), str(folder / "model.safetensors"), metadata={"format": "pt"})
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json")
               if not (folder / f).exists()]
    if missing:
        raise RuntimeError(f"building preset {preset.name} left out {missing}")


def _untie_head(model) -> None:
    """Give ``model`` an output head of its own, drawn as T5 draws an untied head (normal, std
    the config's initializer factor), and a config that says so. transformers' T5 config ties
    the head whatever it is given, so the flag is set on the built config."""
    import torch

    head = model.get_output_embeddings()
    std = model.config.initializer_factor
    head.weight = torch.nn.Parameter(torch.empty_like(head.weight).normal_(0.0, std))
    model.config.tie_word_embeddings = False


def _stored_once(model) -> dict[str, torch.Tensor]:
    """The model's tensors, each under the first name the model gives it (a tied tensor's
    owner: T5's ``shared.weight``), as save_pretrained stores them."""
    kept: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            kept[name] = tensor.contiguous()
    return kept


def _train_tokenizer(preset: Preset, folder: Path) -> int:
    """Byte-level BPE over the word list: no unknown tokens, whole words as single pieces."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2048, special_tokens=preset.specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    # Each word with and without a leading space, as it appears mid-sentence and at the start.
    corpus = [w for word in _WORDS for w in (word, " " + word, " " + word.capitalize())]
    tok.train_from_iterator(corpus * 3, trainer)
    tok.save(str(folder / "tokenizer.json"))
    extra = [t for t in preset.specials if t.startswith("<extra_id_")]
    tokenizer_config = {"tokenizer_class": "PreTrainedTokenizerFast", **preset.special_roles}
    if extra:
        tokenizer_config["additional_special_tokens"] = extra
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    return tok.get_vocab_size()
