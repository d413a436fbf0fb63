"""Names of store entries that come from user input."""

from __future__ import annotations

import os
import re


def model_key(model: str) -> str:
    """A model name (hub id, path, pkg:...) as one path segment: the folder of its results."""
    return re.sub(r"[^\w.-]+", "_", model).strip("_")


def short_name(model: str) -> str:
    """A model name for people: a local folder by its name, a packaged model by its package."""
    if model.startswith("pkg:"):
        return model[len("pkg:"):].split("/")[0]
    return os.path.basename(model.rstrip("/")) if os.path.isabs(model) else model
