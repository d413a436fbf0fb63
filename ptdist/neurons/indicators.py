"""Transferability indicators between two prompts of one model.

Embedding similarity, on prompts P1, P2 in R^{L x d}:
- ``E_concat``: cosine of the flattened prompts;
- ``E_avg``: the cosine averaged over all pairs of prompt tokens (P1_i, P2_j), as the paper's
  reference code computes it;
- ``E_tokmean``: the cosine of the token-averaged prompts (what the paper's text describes as
  averaging; a different number from ``E_avg``);
- the Euclidean variants, 1 / (1 + distance) for a Euclidean distance: ``D_concat`` of the
  flattened prompts; ``D_avg`` of the distance averaged over all pairs of prompt tokens,
  1 / (1 + mean_ij |P1_i - P2_j|), as the reference code computes it (the average is taken
  before the 1 / (1 + d), not after); ``D_tokmean`` of the token-averaged prompts.

Model stimulation similarity, on activation states AS(P) (activation > 0 of every FFN neuron,
see `ptdist.neurons.capture`):
- ``ON``: cosine of AS(P1) and AS(P2), each the concatenation over all layers;
- ``ON_layer_k``: the same on layer k alone; ``ON_layers_k-(k+2)``: on 3 consecutive layers.
"""

from __future__ import annotations

import numpy as np

WINDOW = 3


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na and nb else 0.0


def _near(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 / (1.0 + np.linalg.norm(a - b)))


def embedding_indicators(p1: np.ndarray, p2: np.ndarray) -> dict[str, float]:
    """The six embedding indicators of two prompts ``[L, d]``."""
    p1, p2 = np.asarray(p1, dtype=np.float64), np.asarray(p2, dtype=np.float64)
    n1 = p1 / np.maximum(np.linalg.norm(p1, axis=1, keepdims=True), 1e-12)
    n2 = p2 / np.maximum(np.linalg.norm(p2, axis=1, keepdims=True), 1e-12)
    # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: an [L, L] matrix, never the [L, L, d] differences
    # (3 GB for two T5-XXL prompts).
    squared = (p1 ** 2).sum(1)[:, None] + (p2 ** 2).sum(1)[None, :] - 2 * p1 @ p2.T
    pair_dist = np.sqrt(np.maximum(squared, 0.0))
    return {
        "E_concat": _cos(p1.ravel(), p2.ravel()),
        "E_avg": float((n1 @ n2.T).mean()),
        "E_tokmean": _cos(p1.mean(0), p2.mean(0)),
        "D_concat": _near(p1.ravel(), p2.ravel()),
        "D_avg": float(1.0 / (1.0 + pair_dist.mean())),
        "D_tokmean": _near(p1.mean(0), p2.mean(0)),
    }


def neuron_indicators(s1: np.ndarray, s2: np.ndarray) -> dict[str, float]:
    """ON over all layers, each layer, and each window of 3 layers, for activation states
    ``[layers, d_ff]`` (bool)."""
    a, b = np.asarray(s1, dtype=np.float64), np.asarray(s2, dtype=np.float64)
    out = {"ON": _cos(a.ravel(), b.ravel())}
    for k in range(a.shape[0]):
        out[f"ON_layer_{k}"] = _cos(a[k], b[k])
    for k in range(a.shape[0] - WINDOW + 1):
        out[f"ON_layers_{k}-{k + WINDOW - 1}"] = _cos(a[k:k + WINDOW].ravel(),
                                                       b[k:k + WINDOW].ravel())
    return out
