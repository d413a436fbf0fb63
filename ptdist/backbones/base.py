"""What every frozen backbone offers: tokenized batches, and losses/readouts under soft prompts.

Prompts are passed per example ([B, L, d]), not per model: one forward can serve several
prompts at once (batched transfer evaluation). The prompt is prepended to the token embeddings,
in front of every token, exactly where PEFT's prompt tuning puts it, so an exported adapter
reproduces ptdist's logits.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import torch
from torch import nn

from ptdist.errors import PtdistError

Batch = dict[str, torch.Tensor]
IGNORE = -100  # target padding the loss skips
ENCODED_CACHE = 200_000  # texts whose token ids a backbone keeps (a few hundred MB at most)


class Backbone(nn.Module, ABC):
    """A frozen pretrained model plus the tokenizer and readout a task needs."""

    kind: str  # "mlm" or "seq2seq"

    def __init__(self, name: str, model: nn.Module, tokenizer: Any, max_length: int = 128):
        super().__init__()
        self.name = name
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self._label_ids: dict[tuple[str, ...], torch.Tensor] = {}
        self._encoded: dict[str, list[int]] = {}  # text -> token ids (`_text_ids`)
        self._checkpointed: list[nn.Module] = []
        self.model.requires_grad_(False)
        self.model.eval()  # frozen: no dropout, so runs are deterministic and ranks agree

    def train(self, mode: bool = True) -> "Backbone":
        # The backbone never trains; keep it in eval mode whatever the wrapper asks.
        super().train(False)
        for layer in self._checkpointed:
            # transformers recomputes a layer only in training mode; its own flag, not its
            # submodules' (dropout stays off)
            layer.training = True
        return self

    def checkpoint_activations(self) -> None:
        """Keep only each layer's input for the backward and recompute the rest there
        (activation checkpointing): a layer's activations instead of all of them, for about
        a third more compute. Exact: the frozen model has no dropout."""
        from transformers.modeling_layers import GradientCheckpointingLayer

        self.model.activation_checkpointing_enable({"use_reentrant": False})
        self._checkpointed = [m for m in self.model.modules()
                              if isinstance(m, GradientCheckpointingLayer)]
        self.train(False)

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    @property
    def word_embeddings(self) -> nn.Embedding:
        return self.model.get_input_embeddings()

    def special_ids(self) -> set[int]:
        return set(self.tokenizer.all_special_ids)

    def check_prompt(self, prompt: torch.Tensor) -> None:
        if prompt.shape[-1] != self.hidden_size:
            raise PtdistError(
                f"prompt width {prompt.shape[-1]} does not match model '{self.name}' "
                f"(hidden size {self.hidden_size}); a prompt only fits the model it was trained "
                "on, or one of the same width. Use a prompt trained on this model, or project it "
                "with `ptdist project`."
            )

    def usable_positions(self) -> int | None:
        """The input positions an encoder with absolute positions (BERT, RoBERTa) has: its
        position embeddings, less RoBERTa's offset past its padding index. None for models with
        relative positions (T5), which have no such limit."""
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if self.kind != "mlm" or limit is None:
            return None
        padding = getattr(self.model.base_model.embeddings, "padding_idx", None)
        return limit - (padding + 1 if padding is not None else 0)

    def check_length(self, prompt_length: int, max_length: int | None = None) -> None:
        """Refuse a prompt that, with the longest text a batch holds (``max_length`` tokens,
        default the backbone's), takes more positions than the model has. Models with relative
        positions (T5) have no such limit; absolute ones (BERT, RoBERTa) do: RoBERTa's
        positions start after its padding index."""
        usable = self.usable_positions()
        text = self.max_length if max_length is None else max_length
        if usable is not None and prompt_length + text > usable:
            raise PtdistError(
                f"prompt length {prompt_length} plus max_length {text} text tokens "
                f"need {prompt_length + text} positions, but '{self.name}' has "
                f"{usable}; use --prompt-length {max(usable - text, 0)} or less, or "
                "a smaller --max-length")

    def label_token_ids(self, words: Sequence[str]) -> torch.Tensor:
        """First sub-token of each label word (with a leading space, as it appears mid-text).
        Tokenized once per word list: every batch's collate asks for it."""
        key = tuple(words)
        if key not in self._label_ids:
            self._label_ids[key] = self._tokenize_label_words(key)
        return self._label_ids[key]

    def _tokenize_label_words(self, words: tuple[str, ...]) -> torch.Tensor:
        ids = []
        for word in words:
            pieces = self.tokenizer(" " + word.strip(), add_special_tokens=False).input_ids
            if not pieces:
                raise PtdistError(f"label word {word!r} tokenizes to nothing for '{self.name}'")
            ids.append(pieces[0])
        if len(set(ids)) != len(ids):
            raise PtdistError(
                f"label words {list(words)} share a first sub-token for model '{self.name}', so "
                "their classes cannot be told apart; choose label words that start differently."
            )
        return torch.tensor(ids, dtype=torch.long)

    def _text_ids(self, texts: Sequence[str], budget: int) -> list[list[int]]:
        """Token ids of each text, cut to ``budget``. A text is tokenized once per backbone
        (training sees its rows every epoch, evaluation every eval): the ids are kept, up to
        `ENCODED_CACHE` texts."""
        new = [t for t in dict.fromkeys(texts) if t not in self._encoded]
        if new:
            if len(self._encoded) + len(new) > ENCODED_CACHE:
                self._encoded.clear()
            encoded = self.tokenizer(new, add_special_tokens=False).input_ids
            self._encoded.update(zip(new, encoded))
        return [self._encoded[t][:budget] for t in texts]

    def _pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)

    def _embed_with_prompt(self, prompts: torch.Tensor,
                           batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompts in front of the batch's token embeddings, and the attention mask that
        covers both. A batch without ``attention_mask`` attends everywhere: what the memory
        planner runs on the meta device, where no mask's values can be read."""
        self.check_prompt(prompts)
        tokens = self.word_embeddings(batch["input_ids"])
        embeds = torch.cat([prompts.to(tokens.dtype), tokens], dim=1)
        attention_mask = batch.get("attention_mask")
        if attention_mask is None:
            return embeds, None
        prefix = attention_mask.new_ones(prompts.shape[0], prompts.shape[1])
        return embeds, torch.cat([prefix, attention_mask], dim=1)

    @abstractmethod
    def collate(self, rows: Sequence[dict], label_words: Sequence[str] | None) -> Batch:
        """Tokenize task rows (``text`` plus ``label`` or ``target``) into a batch of tensors."""

    def loss(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-example training loss [B] under per-example prompts [B, L, d]."""
        return self._loss_from(self._training_outputs(prompts, batch), batch)

    @abstractmethod
    def _training_outputs(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        """What the loss is computed from, one row per example (logits at the readout)."""

    @abstractmethod
    def _loss_from(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Per-example loss [B] of ``batch`` from its rows of `_training_outputs`."""

    @abstractmethod
    def readout_logits(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Full-vocabulary logits [B, V] where the class is read: the mask after the prompt
        (MLM) or the first decoder step (encoder-decoder)."""

    @abstractmethod
    def class_logits(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Scores [B, C] of each class's label word."""

    def generate(self, prompts: torch.Tensor, batch: Batch, max_new_tokens: int) -> list[str]:
        raise PtdistError(
            f"model '{self.name}' is an encoder MLM and cannot generate text; generation tasks "
            "(QA, summarisation) need an encoder-decoder model such as T5."
        )
