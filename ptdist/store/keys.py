"""Names of store entries that come from user input."""

from __future__ import annotations

import re


def model_key(model: str) -> str:
    """A model name (hub id, path, pkg:...) as one path segment: the folder of its results."""
    return re.sub(r"[^\w.-]+", "_", model).strip("_")
