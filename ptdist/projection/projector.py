"""Cross-model projectors: a two-layer MLP from one model's prompt space to another's.

Two variants (docs/projection.md lists their sizes at T5-XXL scale):

  flat   the reference architecture: the whole prompt, flattened, through
         Linear(L*d_src -> h) -> tanh -> Linear(h -> L*d_tgt), then LayerNorm per token.
         Mixes positions; its size grows with L^2 * d, so it is large at T5-XXL.
  token  the same MLP applied to each prompt token on its own (shared over positions):
         Linear(d_src -> h) -> tanh -> Linear(h -> d_tgt) -> LayerNorm. Small at any L, and
         blind to position.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ptdist.errors import PtdistError
from ptdist.projection.config import VARIANTS, ProjectorConfig


@dataclass(frozen=True)
class ProjectorShape:
    variant: str
    length: int  # prompt tokens L
    source_width: int
    target_width: int
    hidden: int = ProjectorConfig.hidden

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise PtdistError(f"unknown projector variant '{self.variant}'; use one of: "
                              f"{', '.join(VARIANTS)}")
        for name in ("length", "source_width", "target_width", "hidden"):
            if getattr(self, name) < 1:
                raise PtdistError(f"projector {name} must be at least 1 "
                                  f"(got {getattr(self, name)})")

    @property
    def parameters(self) -> int:
        """Trainable parameters: the two Linear layers (with biases) and the LayerNorm."""
        d_in, d_out = self.source_width, self.target_width
        if self.variant == "flat":
            d_in, d_out = d_in * self.length, d_out * self.length
        return d_in * self.hidden + self.hidden + self.hidden * d_out + d_out + \
            2 * self.target_width

    def to_dict(self) -> dict:
        return asdict(self)


class Projector(nn.Module):
    """Maps prompts ``[..., L, d_src]`` to ``[..., L, d_tgt]``."""

    def __init__(self, shape: ProjectorShape):
        super().__init__()
        self.shape = shape
        flat = shape.variant == "flat"
        d_in = shape.source_width * (shape.length if flat else 1)
        d_out = shape.target_width * (shape.length if flat else 1)
        self.fc1 = nn.Linear(d_in, shape.hidden)
        self.fc2 = nn.Linear(shape.hidden, d_out)
        self.norm = nn.LayerNorm(shape.target_width)

    def forward(self, prompts: torch.Tensor) -> torch.Tensor:
        s = self.shape
        if tuple(prompts.shape[-2:]) != (s.length, s.source_width):
            raise PtdistError(
                f"this projector maps prompts of shape [{s.length}, {s.source_width}] (length x "
                f"width of its source model); got {list(prompts.shape[-2:])}. Use a prompt of "
                "the projector's source model and prompt length, or train a projector for it.")
        lead = prompts.shape[:-2]
        x = prompts.flatten(-2) if s.variant == "flat" else prompts
        out = self.fc2(torch.tanh(self.fc1(x.to(self.fc1.weight.dtype))))
        return self.norm(out.reshape(*lead, s.length, s.target_width))


class ProjectedPrompt(nn.Module):
    """A projector applied to fixed source prompts, one per training task: the trainable
    'prompt' of task tuning (called with a batch size, and the task's index, like
    `SoftPrompt`, so the training recipe serves both)."""

    def __init__(self, projector: Projector, sources: torch.Tensor):
        super().__init__()
        self.projector = projector
        # Not in the state dict: the checkpoint holds what is trained, the sources are inputs.
        self.register_buffer("sources", sources.detach().float().clone(), persistent=False)

    def forward(self, batch_size: int, source: int = 0) -> torch.Tensor:
        return self.projector(self.sources[source]).unsqueeze(0).expand(batch_size, -1, -1)
