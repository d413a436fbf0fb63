"""Encoder-decoder backbones (T5 v1.0 ReLU FFN, T5 v1.1 gated-GELU): text to text.

Layout: encoder [P_1 .. P_L] text </s>. Classification scores the first piece of each label
word at the first decoder step and trains with cross-entropy on the whole label text;
generation tasks train on the target text and decode greedily.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ptdist.backbones.base import IGNORE, Backbone, Batch


class Seq2SeqBackbone(Backbone):
    kind = "seq2seq"
    specials = 1

    def collate(self, rows: Sequence[dict], label_words: Sequence[str] | None,
                cut: int | None = None) -> Batch:
        tok = self.tokenizer
        texts = self._text_ids([r["text"] for r in rows], self.text_budget(cut))
        ids = [[*t, tok.eos_token_id] for t in texts]
        batch = {
            "input_ids": self._pad(ids, tok.pad_token_id),
            "attention_mask": self._pad([[1] * len(r) for r in ids], 0),
        }
        targets = None  # the text to train on: the label word, or the generation target
        if label_words is not None:
            batch["label_ids"] = self.label_token_ids(label_words).expand(len(rows), -1)
            if "label" in rows[0]:
                batch["labels"] = torch.tensor([r["label"] for r in rows], dtype=torch.long)
                targets = [label_words[r["label"]] for r in rows]
        elif "target" in rows[0]:
            targets = [r["target"] for r in rows]
        if targets is not None:
            target_ids = self._text_ids([" " + t.strip() for t in targets], self.max_length - 1)
            batch["target_ids"] = self._pad([[*t, tok.eos_token_id] for t in target_ids], IGNORE)
        return batch

    def _decoder_start(self, batch_size: int, device: torch.device) -> torch.Tensor:
        start = self.model.config.decoder_start_token_id
        return torch.full((batch_size, 1), start, dtype=torch.long, device=device)

    def readout_logits(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Full-vocabulary logits [B, V] of the first decoder step."""
        embeds, mask = self._embed_with_prompt(prompts, batch)
        start = self._decoder_start(embeds.shape[0], embeds.device)
        return self.model(inputs_embeds=embeds, attention_mask=mask,
                          decoder_input_ids=start).logits[:, 0]

    def class_logits(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.readout_logits(prompts, batch).gather(1, batch["label_ids"])

    def _training_outputs(self, prompts: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Decoder logits [B, T, V] over the targets (teacher forcing)."""
        embeds, mask = self._embed_with_prompt(prompts, batch)
        return self.model(inputs_embeds=embeds, attention_mask=mask,
                          labels=batch["target_ids"]).logits

    def _loss_from(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        targets = batch["target_ids"]
        per_token = F.cross_entropy(outputs.float().transpose(1, 2), targets,
                                    ignore_index=IGNORE, reduction="none")
        return per_token.sum(1) / (targets != IGNORE).sum(1).clamp(min=1)

    @torch.no_grad()
    def generate(self, prompts: torch.Tensor, batch: Batch, max_new_tokens: int) -> list[str]:
        embeds, mask = self._embed_with_prompt(prompts, batch)
        out = self.model.generate(inputs_embeds=embeds, attention_mask=mask,
                                  max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
        return [s.strip() for s in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
