"""Activated FFN neurons: what each layer's feed-forward intermediate activation is when the
frozen model reads a prompt.

Where it is read (forward hooks on the activation that feeds each FFN's output projection),
as the paper defines ON:
- encoder MLM (RoBERTa, BERT): every layer, at the mask position right after the prompt;
- T5: every decoder layer, at the first decoding step only (where the class is read). The
  encoder's FFNs are not read: the prompt reaches the decoder through cross-attention, and an
  encoder neuron has no single position to be read at (averaged over the input, a ReLU neuron
  would count as active if it fired anywhere).

Protocols:
- ``prompt`` (the paper's): the prompt with no task input. MLM: ``P <mask> </s>``; T5: ``P``
  then the sentinel ``<extra_id_0>`` and ``</s>`` into the encoder.
- ``data``: the prompt in front of each of N examples of its task; the activation of each
  neuron is averaged over the examples.

"Activated" means activation > 0. For ReLU FFNs (T5 v1.0) that is the ReLU's output; for GELU
FFNs (BERT, RoBERTa) the GELU's output, positive exactly when its input is. For gated-GELU FFNs
(T5 v1.1: wo(GELU(wi_0 x) * wi_1 x)) the gate GELU(wi_0 x) is what is recorded and tested:
it is positive exactly when the gate's input is, and it is what selects (gates) the neuron; the
linear branch wi_1 x only scales the selected neurons, with either sign.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from ptdist.backbones import Backbone

PROTOCOLS = ("prompt", "data")
_MLM_SITE = re.compile(r"encoder\.layer\.(\d+)\.intermediate$")
_T5_SITE = re.compile(r"decoder\.block\.(\d+)\.layer\.\d+\.DenseReluDense\.act$")


@dataclass(frozen=True)
class FfnSite:
    name: str  # "encoder.3" (MLM), "decoder.0" (T5)
    index: int  # position in the concatenation over layers
    module: nn.Module


def ffn_sites(backbone: Backbone) -> list[FfnSite]:
    """Each FFN activation module ON reads, in layer order: an MLM's encoder layers, T5's
    decoder layers."""
    stack, pattern = ("encoder", _MLM_SITE) if backbone.kind == "mlm" else ("decoder", _T5_SITE)
    found = sorted((int(m.group(1)), module) for name, module in backbone.model.named_modules()
                   if (m := pattern.search(name)))
    return [FfnSite(f"{stack}.{layer}", i, module) for i, (layer, module) in enumerate(found)]


def bare_rows(backbone: Backbone) -> list[dict]:
    """The input of the ``prompt`` protocol, as a task row: nothing (MLM, whose layout adds
    the mask and end token) or T5's first sentinel."""
    return [{"text": "" if backbone.kind == "mlm" else "<extra_id_0>"}]


@torch.no_grad()
def ffn_activations(backbone: Backbone, prompts: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Activations ``[B, layers, d_ff]`` of prompts ``[B, L, d]`` on a collated batch, read
    where the module docstring says."""
    sites = ffn_sites(backbone)
    outputs: dict[int, torch.Tensor] = {}
    hooks = [s.module.register_forward_hook(
        lambda _m, _i, out, index=s.index: outputs.__setitem__(index, out)) for s in sites]
    try:
        backbone.readout_logits(prompts, batch)
    finally:
        for hook in hooks:
            hook.remove()
    # The mask follows the prompt (MLM); the decoder's first step is its position 0 (T5).
    position = prompts.shape[1] if backbone.kind == "mlm" else 0
    return torch.stack([outputs[s.index].float()[:, position] for s in sites], dim=1)
