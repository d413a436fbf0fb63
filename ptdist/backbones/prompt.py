"""The soft prompt P in R^{L x d} and how it is initialised.

How a run's prompt starts is a `PromptInit` (`prompt_init.py`).

The two modes that draw (random, vocab) draw from `init_generator`, seeded by the run's seed and
its task: the runs of one seed on different tasks start from different prompts, so their
similarity after training is not a shared start. Before issue 26 the generator was seeded by
the run's seed alone (rule "seed"); a stored prompt's manifest names the rule that made it.
"""

from __future__ import annotations

import hashlib
import torch
from torch import nn

from ptdist.backbones.prompt_init import InitMode, PromptInit
from ptdist.errors import PtdistError

INIT_RULE = "seed+task"  # how `init_generator` seeds the draws of a run's init


def init_generator(seed: int, task: str) -> torch.Generator:
    """The generator a run's init draws from: seeded by a hash of the run's seed and task name
    (`INIT_RULE`), the same on every machine and process."""
    digest = hashlib.sha256(f"{seed}/{task}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


# The parameter name of a `SoftPrompt`, in checkpoints and in a finished run's best
# parameters: packed and separate runs key it alike, so they resume from each other's
# checkpoints.
PROMPT_PARAM = "weight"


class SoftPrompt(nn.Module):
    """The only trainable tensor. A module (not a bare tensor) so that DeepSpeed ZeRO-3 gathers
    its partitioned parameter when forward is called."""

    def __init__(self, init: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(init.detach().clone().float())

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)


def initial_prompt(init: PromptInit, embeddings: nn.Embedding, length: int, special_ids: set[int],
                   tokenizer, generator: torch.Generator,
                   artifact: torch.Tensor | None = None) -> torch.Tensor:
    """A [length, d] tensor for ``init``; ``artifact`` is the loaded tensor of a prompt init.

    Under ZeRO-3 the caller gathers ``embeddings`` first (vocab and text modes read rows)."""
    weight = embeddings.weight.detach()
    d = embeddings.embedding_dim
    if init.mode is InitMode.RANDOM:
        return torch.rand(length, d, generator=generator) - 0.5
    if init.mode is InitMode.VOCAB:
        candidates = torch.tensor([i for i in range(embeddings.num_embeddings)
                                   if i not in special_ids])
        if len(candidates) < length:
            raise PtdistError(f"vocab init needs {length} tokens, the vocabulary has "
                              f"{len(candidates)}; use a shorter prompt or random init")
        pick = candidates[torch.randperm(len(candidates), generator=generator)[:length]]
        return weight[pick].float().cpu().clone()
    if init.mode is InitMode.TEXT:
        ids = tokenizer(init.text, add_special_tokens=False).input_ids
        if not ids:
            raise PtdistError(f"text init {init.text!r} tokenizes to nothing")
        ids = (ids * (length // len(ids) + 1))[:length]
        return weight[torch.tensor(ids)].float().cpu().clone()
    assert artifact is not None, "prompt init needs the artifact tensor"
    if artifact.shape != (length, d):
        raise PtdistError(
            f"prompt {init.prompt!r} has shape {list(artifact.shape)} but this run needs "
            f"[{length}, {d}] (prompt length x model width); pass --prompt-length "
            f"{artifact.shape[0]} if only the length differs, or a prompt of a model of width {d}."
        )
    return artifact.float().clone()
