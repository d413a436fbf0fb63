"""A fingerprint of the frozen backbone: sha256 over every parameter's bytes, in name order.

Taken before and after training it proves the backbone was not modified (the run fails if it
was), and stored in the manifest it records exactly which weights a prompt was trained on.
Under ZeRO-3 each parameter is gathered in turn, so it is a collective: call on every rank.
"""

from __future__ import annotations

import hashlib

from torch import nn

from ptdist.backbones.weights import gathered, tensor_bytes


def frozen_fingerprint(module: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(module.named_parameters()):
        if param.requires_grad:
            continue
        with gathered(param):
            digest.update(name.encode())
            digest.update(tensor_bytes(param))
    return digest.hexdigest()
