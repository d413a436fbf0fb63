"""Package faces whose names load their module on first use (PEP 562 module ``__getattr__``).

Importing a package runs its ``__init__``; a face that imported every module at once would make
`import ptdist.backbones` import torch even where only the preset names are read (the help of
every command lists them). A lazy face imports a module when one of its names is first used,
so the cost of torch, transformers or pydantic is paid by the code that needs them.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any, Callable


def lazy_face(package: str, modules: dict[str, tuple[str, ...]]
              ) -> tuple[list[str], Callable[[str], Any], Callable[[], list[str]]]:
    """``__all__``, ``__getattr__`` and ``__dir__`` for ``package`` whose public names are
    ``modules`` (submodule name -> the names it defines), each module imported on first use.

    In a package's ``__init__``: ``__all__, __getattr__, __dir__ = lazy_face(__name__, {...})``.
    """
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in home:
            raise AttributeError(f"module '{package}' has no attribute '{name}'")
        value = getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        setattr(sys.modules[package], name, value)  # found directly from now on
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(home))

    return sorted(home), __getattr__, __dir__
