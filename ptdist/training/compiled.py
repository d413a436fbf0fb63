"""A run's training step through its frozen backbone: each micro-batch's forward and backward,
eager or compiled (`torch.compile`, a run's ``compile`` setting).

Compiled, the backbone's forward and backward may round differently from the eager step
(generated kernels may order reductions otherwise), so a compiled run is another run with an id
of its own. Its shapes are compiled as dynamic from the first call so that every batch width
goes through the same kernels, whichever widths came before, and a compiled run packed with
others steps as it does alone (the packed-equality tests run eagerly: compiling takes minutes
on this project's CPUs). Whether it pays is measured per device and model family
(benchmarks/RESULTS.md, "Performance levers"); the presets leave it off.

Compiled kernels are kept in the cache folder (`ptdist.runtime.cache_root`, ``torch_compile``)
unless ``TORCHINDUCTOR_CACHE_DIR`` says otherwise, so a later job of the same model starts from
them. A compilation that fails says so in one line, and the job steps eagerly from then on.
"""

from __future__ import annotations

import logging
import os

import torch

from ptdist.backbones import Backbone
from ptdist.backbones.base import Batch
from ptdist.runtime import cache_root

log = logging.getLogger(__name__)


class TrainingStep:
    """Forward and backward of one micro-batch under one prompt, eager or compiled."""

    def __init__(self, backbone: Backbone, compile: bool = False):
        self.backbone = backbone
        self.compiled = None
        if compile:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_root() / "torch_compile"))
            self.compiled = torch.compile(backbone.loss, dynamic=True)

    def __call__(self, prompt: torch.Tensor, batch: Batch, accumulation: int) -> float:
        """Add the gradient of ``batch``'s mean loss / ``accumulation`` to ``prompt``'s
        (a leaf [L, d]); returns that mean loss."""
        if self.compiled is not None:
            before = None if prompt.grad is None else prompt.grad.clone()
            try:
                return _forward_backward(self.compiled, prompt, batch, accumulation)
            except Exception as exc:  # noqa: BLE001 - any failure of the compiler: step eagerly
                first = (str(exc).strip().splitlines() or [""])[0]
                log.warning(f"[ptdist] compiling the training step of {self.backbone.name} "
                            f"failed ({type(exc).__name__}: {first[:200]}); it runs eagerly "
                            "from here")
                self.compiled = None
                prompt.grad = before
        return _forward_backward(self.backbone.loss, prompt, batch, accumulation)


def _forward_backward(loss, prompt: torch.Tensor, batch: Batch, accumulation: int) -> float:
    rows = batch["input_ids"].shape[0]
    mean = loss(prompt.unsqueeze(0).expand(rows, -1, -1), batch).mean()
    (mean / accumulation).backward()
    return mean.item()
