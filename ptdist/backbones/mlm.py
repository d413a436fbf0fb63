"""Encoder MLM backbones (RoBERTa, BERT): a verbalizer over the mask right after the prompt.

Layout: [P_1 .. P_L] <mask> text </s>. The soft prompt takes the sequence start, the mask
follows it, and the class score is the MLM logit of each class's label word at the mask.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ptdist.backbones.base import Backbone, Batch
from ptdist.errors import PtdistError


class MaskedLMBackbone(Backbone):
    kind = "mlm"

    def collate(self, rows: Sequence[dict], label_words: Sequence[str] | None) -> Batch:
        tok = self.tokenizer
        end = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        texts = self._text_ids([r["text"] for r in rows], self.max_length - 2)
        ids = [[tok.mask_token_id, *t, end] for t in texts]
        batch = {
            "input_ids": self._pad(ids, tok.pad_token_id),
            "attention_mask": self._pad([[1] * len(r) for r in ids], 0),
        }
        if label_words is not None:
            batch["label_ids"] = self.label_token_ids(label_words).expand(len(rows), -1)
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
        return batch

    def readout_logits(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Full-vocabulary MLM logits [B, V] at the mask position."""
        embeds, mask = self._embed_with_prompt(prompts, batch)
        hidden = self.model.base_model(inputs_embeds=embeds, attention_mask=mask)[0]
        # The head is position-wise and only the mask is read: applied to every position it
        # was half the forward of MiniLM (a 30k-word vocabulary), measured in benchmarks/.
        return self.mlm_head(hidden[:, prompts.shape[1]])

    @property
    def mlm_head(self) -> torch.nn.Module:
        """The MLM head (transform + vocabulary projection): RoBERTa's ``lm_head``, BERT's
        ``cls``."""
        for name in ("lm_head", "cls"):
            if hasattr(self.model, name):
                return getattr(self.model, name)
        raise PtdistError(f"model '{self.name}' ({type(self.model).__name__}) has no MLM head "
                          "ptdist knows (lm_head or cls); use a RoBERTa- or BERT-style "
                          "*ForMaskedLM model")

    def class_logits(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.readout_logits(prompts, batch).gather(1, batch["label_ids"])

    def _training_outputs(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.readout_logits(prompts, batch)

    def _loss_from(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        scores = outputs.gather(1, batch["label_ids"]).float()
        return F.cross_entropy(scores, batch["labels"], reduction="none")
