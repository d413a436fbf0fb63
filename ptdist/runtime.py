"""Process-wide settings every ptdist process applies first: the CLI, and each Ray worker."""

from __future__ import annotations

import logging
import os
import sys
import warnings


VERBOSE = "PTDIST_VERBOSE"  # set by --verbose; Ray workers inherit it from the driver


def say(line: str) -> None:
    """One ptdist diagnostic line on stderr, from rank 0 of a process group only."""
    if os.environ.get("RANK", "0") == "0":
        print(line, file=sys.stderr, flush=True)


def quiet_libraries() -> None:
    """Silence library chatter the user can do nothing about (transformers' load reports,
    progress bars, DeepSpeed's info lines); keep ptdist's own progress. With ``--verbose``
    (``PTDIST_VERBOSE=1``) the libraries keep their default verbosity."""
    if os.environ.get(VERBOSE):
        return
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


def ray_environment() -> None:
    """Keep Ray on loopback and private: no usage reporting, no cluster on a laptop's LAN.
    Set before `ray` is imported, in the driver; workers inherit them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
