"""Process-wide settings every ptdist process applies first: the CLI, and each Ray worker."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Callable

def cache_root() -> Path:
    """Where ptdist keeps what it builds once per machine (presets, converted models, fitted
    MLM heads, fetched packages, DeepSpeed's op builds): $PTDIST_CACHE, else ~/.cache/ptdist."""
    return Path(os.environ.get("PTDIST_CACHE", Path.home() / ".cache" / "ptdist"))


def built_once(target: Path, build: Callable[[Path], None], marker: str | None = None) -> Path:
    """``target``, built on first use: ``build`` fills a fresh folder beside it, which is then
    renamed into place, so a killed build leaves nothing half written, and of two processes
    building at once one wins and the other's copy is dropped. The folder counts as built once
    ``target / marker`` (default: ``target`` itself) exists."""
    done = target / marker if marker else target
    if done.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(staging)
        try:
            os.rename(staging, target)  # atomic; loses the race harmlessly if another process won
        except OSError:
            if not done.exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def quiet_libraries() -> None:
    """Silence library chatter the user can do nothing about (transformers' load reports,
    progress bars, DeepSpeed's info lines); ptdist's own progress is its logger's
    (`ptdist.logs`, which calls this unless ``--verbose``)."""
    # DeepSpeed calls torch collectives that torch has deprecated; under ZeRO-3 it would print
    # at every step.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated",
                            category=FutureWarning)
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # skips DeepSpeed's "no GPU" warning
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


RAY_AUTH_MODE = "RAY_AUTH_MODE"


def ray_environment(local: bool = True) -> None:
    """Ray's settings, set before `ray` is imported (in the driver; Ray's processes inherit
    them): no usage reporting, and for the embedded local Ray (``local``) no cluster on the
    machine's network: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is what keeps it on loopback
    (otherwise Ray resolves the node address 127.0.0.1 to the machine's external address, and
    its servers listen there and on every interface). A joined cluster keeps its own settings.

    Worker output reaches the driver (and `ray job logs`) as it is: Ray's deduplication
    (``RAY_DEDUP_LOGS``) compares lines with their numbers masked, so it would fold the
    progress of jobs that run at once into one line and a "[repeated Nx across cluster]" note.
    Tune's default output engine prints its settings on stdout whatever ``verbose`` says; the
    legacy one (``RAY_AIR_NEW_OUTPUT=0``) keeps quiet at ``verbose=0``, so stdout holds only
    the command's result.

    Token authentication (``RAY_AUTH_MODE``) is left to Ray, which turns it on for a local Ray
    when the variable is unset: set here, after a program imported ray, it would reach Ray's
    processes but not the driver, which could then not connect to them.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if local:
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
