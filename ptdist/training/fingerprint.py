"""A fingerprint of the frozen backbone: sha256 over every parameter's bytes, in name order.

Taken before and after training it proves the backbone was not modified (the run fails if it
was), and stored in the manifest it records exactly which weights a prompt was trained on.
Under ZeRO-3 each parameter is gathered in turn, so it is a collective: call on every rank.
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def frozen_fingerprint(module: nn.Module) -> str:
    import deepspeed

    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        if param.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([param]):  # no-op unless ZeRO-3 partitioned
            data = param.detach().cpu().contiguous()
            digest.update(name.encode())
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
