"""Where ptdist's output goes. A command's result goes to stdout, from one place
(`ptdist.cli.options.emit`); everything else (progress, notes, warnings, the error line) goes
through the ``ptdist`` logger (``logging.getLogger(__name__)`` in every module) to stderr.

The logger has one handler, set when ptdist is imported (INFO: a program that uses ptdist as a
library sees what the CLI shows; ``logging.getLogger("ptdist").setLevel`` changes it) and set again
by `setup` in every process that runs ptdist's work: the CLI, at the level of --verbose (DEBUG, the
libraries' own logs kept) or --quiet (WARNING), and each Ray job attempt
(`orchestration.execution.attempt.begin`), which gets the driver's level with the job, since a
cluster's worker processes do not inherit the driver's environment.

In a process group (torchrun, the deepspeed launcher, a Ray Train worker group) every rank runs
the same code, so only global rank 0 logs below WARNING: each progress line appears once. A
warning or an error from another rank keeps its rank, ``[rank N]``. In a Ray job attempt each
line starts with the job's id, so the lines of jobs that run at once can be told apart in a Ray
job's log.
"""

from __future__ import annotations

import logging
import os
import sys

LEVELS = {"verbose": logging.DEBUG, "default": logging.INFO, "quiet": logging.WARNING}


def setup(level: int = logging.INFO, job: str | None = None) -> None:
    """`configure` the logger, and silence library chatter unless ``level`` is DEBUG."""
    from ptdist.runtime import quiet_libraries  # imports the libraries: not at `import ptdist`

    configure(level, job)
    if level > logging.DEBUG:
        quiet_libraries()


def configure(level: int = logging.INFO, job: str | None = None) -> None:
    """Log ptdist's records at ``level`` and above to stderr, each line prefixed by ``job`` if
    given. Replaces the handler an earlier call set."""
    logger = logging.getLogger(__package__)
    for handler in [h for h in logger.handlers if isinstance(h, _Stderr)]:
        logger.removeHandler(handler)
    handler = _Stderr()
    handler.setFormatter(_Format(job))
    handler.addFilter(_from_rank0_below_warning)
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # a Ray Train worker's root logger prints too: no line twice


def level() -> int:
    """The level ptdist logs at in this process: what its Ray jobs are handed."""
    return logging.getLogger(__package__).getEffectiveLevel()


def library_level() -> int:
    """The level for a library that takes one (Ray, Ray Train): a step above ptdist's, so its
    info lines come only with --verbose and its warnings not with --quiet."""
    return {logging.DEBUG: logging.INFO, logging.INFO: logging.WARNING}.get(level(),
                                                                           logging.ERROR)


def global_rank() -> tuple[int, int]:
    """(rank, world size) of this process in its process group: torch's once the group exists,
    else the launcher's (torchrun, deepspeed and Ray Train set RANK and WORLD_SIZE first)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _from_rank0_below_warning(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or global_rank()[0] == 0


class _Format(logging.Formatter):
    """A record as one line (or a message's own lines): ``ptdist: warning: ...`` and
    ``ptdist: error: ...`` for those levels, after the job's id and a rank other than 0."""

    def __init__(self, job: str | None):
        super().__init__()
        self.job = f"[{job}] " if job else ""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        if record.levelno >= logging.WARNING:
            text = f"ptdist: {record.levelname.lower()}: {text}"
        rank = global_rank()[0]
        return self.job + (f"[rank {rank}] " if rank else "") + text


BARS: set = set()  # the progress bars open on this terminal (`ptdist.progress`)


def write(line: str) -> None:
    """``line`` on the stderr of the moment (so a test's captured stream gets it too), above
    the open progress bars rather than through them."""
    if BARS:
        from tqdm import tqdm

        tqdm.write(line, file=sys.stderr)
    else:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


class _Stderr(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            write(self.format(record))
        except Exception:
            self.handleError(record)
