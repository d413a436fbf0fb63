"""Checkpoints of what a run trains, never the frozen backbone: safetensors tensors and a JSON
state, nothing pickled.

A checkpoint holds the trained parameters in fp32 (a prompt, or a projector's weights), their
Adam moments (gathered whole, whatever the ZeRO stage), the parameters of the best evaluation so
far, the step, the evaluation history and the RNG state. Because the moments are stored
unpartitioned, a run can resume on a different number of processes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ptdist.store.atomic import atomic_write

ADAM_KEYS = ("exp_avg", "exp_avg_sq")


@dataclass
class TrainState:
    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0
    history: list[dict] = field(default_factory=list)


def innermost_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer under DeepSpeed's ZeRO / bf16 wrappers."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _ensure_adam_state(engine) -> torch.optim.Optimizer:
    """The innermost torch optimizer, with Adam state for every parameter it steps.

    torch creates Adam state lazily at the first step; a resume before any step must create it
    (zeros, as torch would) so the saved moments have somewhere to go. ZeRO-3 hands its flat
    fp32 partitions to the torch optimizer only inside step(), so those are added explicitly.
    """
    inner = innermost_optimizer(engine.optimizer)
    params = [p for group in inner.param_groups for p in group["params"]]
    params += list(getattr(engine.optimizer, "fp32_partitioned_groups_flat", []))
    for p in params:
        state = inner.state[p]
        if not state:
            state["step"] = torch.tensor(0.0)
            for key in ADAM_KEYS:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
    return inner


def _is_wrapped(param: torch.nn.Parameter) -> bool:
    return hasattr(param, "ds_id") or hasattr(param, "_hp_mapping")


def gather_state(engine, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """Each trained parameter in fp32 (key ``name``) and its Adam moments (``name.exp_avg``...),
    whole, plus ``adam_step``. Collective under ZeRO: call on every rank."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    inner = innermost_optimizer(engine.optimizer)
    # torch creates Adam state at the first step; before it (the evaluation at step 0) there
    # are no moments to read, and ZeRO's accessors fail rather than return None.
    stepped = any(inner.state.values())
    out: dict[str, torch.Tensor] = {}
    for name, param in params.items():
        if _is_wrapped(param):
            tensors = {name: safe_get_full_fp32_param(param)}
            for key in ADAM_KEYS if stepped else ():
                value = safe_get_full_optimizer_state(param, key)
                if value is not None:
                    tensors[f"{name}.{key}"] = value
        else:
            tensors = {name: param.detach()}
            tensors.update({f"{name}.{k}": v for k, v in inner.state[param].items()
                            if k in ADAM_KEYS})
        shape = param.ds_shape if hasattr(param, "ds_shape") else param.shape
        out.update({k: v.detach().float().reshape(shape).cpu().clone()
                    for k, v in tensors.items()})
    steps = [s["step"] for s in inner.state.values() if "step" in s]
    out["adam_step"] = torch.tensor(float(steps[0]) if steps else 0.0)
    return out


def restore_optimizer_state(engine, params: dict[str, torch.nn.Parameter],
                            tensors: dict[str, torch.Tensor]) -> None:
    """Put saved Adam moments and step back. The parameters themselves are restored (from the
    same tensors) before DeepSpeed wraps them."""
    from deepspeed.utils import safe_set_full_optimizer_state

    inner = _ensure_adam_state(engine)
    # ZeRO-1/2 and the bf16 optimizer link each parameter to its slice of the optimizer state
    # only after their first step (through this hook); a resume writes state before any step.
    link = getattr(engine.optimizer, "_lazy_init_hp_params_optimizer_state", None)
    if link is not None:
        link()
    for name, param in params.items():
        for key in ADAM_KEYS:
            saved = tensors.get(f"{name}.{key}")
            if saved is None:
                continue
            if _is_wrapped(param):
                device = next(iter(inner.state.values()))[key].device
                safe_set_full_optimizer_state(param, saved.to(device), key)
            else:
                inner.state[param][key].copy_(saved.reshape(param.shape))
    for state in inner.state.values():
        state["step"] = tensors["adam_step"].clone().to(state["step"].device)


CHECKPOINT_FILE = "checkpoint.safetensors"


def save_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], state: TrainState) -> None:
    """One file, one atomic rename: tensors and the state that goes with them (in the
    safetensors metadata) can never come from different steps."""
    tensors = {k: v.contiguous() for k, v in dict(tensors, rng=torch.get_rng_state()).items()}
    metadata = {"state": json.dumps(state.__dict__)}
    atomic_write(folder / CHECKPOINT_FILE, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_checkpoint(folder: Path) -> tuple[dict[str, torch.Tensor], TrainState] | None:
    """The saved tensors (prompt, moments, best prompt, ``rng``) and state, or None."""
    path = folder / CHECKPOINT_FILE
    if not path.exists():
        return None
    with safe_open(path, framework="pt") as f:
        state = TrainState(**json.loads(f.metadata()["state"]))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, state
