"""How fast the command line starts: `ptdist --help` and every command's --help, wall seconds
from process start to exit (`python -m ptdist ... --help`, what the `ptdist` script runs), this
checkout beside a baseline checkout, with the CPU seconds each process used (which a loaded
machine changes much less than the wall time), and which heavy libraries each one's help
imports.

    git worktree add /tmp/cli-baseline 3a10252      # main before the fast start (issue 24)
    python benchmarks/cli_start.py --baseline /tmp/cli-baseline

Each help runs in a fresh process with PYTHONPATH at its checkout; the two checkouts alternate
within every repetition (common.interleaved), so a burst of load slows both. Without
--baseline only this checkout is timed (about half a minute); with it, a few minutes (the
baseline's helps take seconds each).
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from common import REPO, header, interleaved, load, table

HEAVY = ("torch", "transformers", "datasets", "deepspeed", "ray", "pyarrow", "matplotlib",
         "pandas", "pydantic")
# What `ptdist --help` imported, printed by a child process of the checkout.
IMPORTED = f"""
import contextlib, io, sys
from ptdist.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit:
        pass
print(" ".join(sorted({{m.split(".")[0] for m in sys.modules}} & set({HEAVY!r}))) or "none")
"""
LIMIT_S = 0.5  # the bound for every help


def commands() -> list[tuple[str, ...]]:
    """`()` for `ptdist --help`, then every command group and command, as argv prefixes."""
    import argparse

    from ptdist.cli import build_parser

    found: list[tuple[str, ...]] = [()]

    def walk(parser: argparse.ArgumentParser, prefix: tuple[str, ...]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    found.append(prefix + (name,))
                    walk(sub, prefix + (name,))

    walk(build_parser(), ())
    return found


def _env(checkout: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(checkout), OMP_NUM_THREADS="1")


def help_run(checkout: Path, argv: tuple[str, ...], cpu: list[float]):
    """A function that runs ``ptdist ARGV --help`` in ``checkout``, fails if it fails, and
    appends the CPU seconds (user + system) the process used to ``cpu``."""
    command = [sys.executable, "-m", "ptdist", *argv, "--help"]

    def run() -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(command, cwd=checkout, env=_env(checkout), check=True,
                       stdout=subprocess.DEVNULL)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)

    return run


def heavy_imports(checkout: Path) -> str:
    done = subprocess.run([sys.executable, "-c", IMPORTED], cwd=checkout, env=_env(checkout),
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def _case(side: str, argv: tuple[str, ...]) -> str:
    return " ".join((side, *argv))


def main() -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", type=Path, default=None,
                   help="another checkout of ptdist (e.g. a git worktree of an older commit)")
    p.add_argument("--reps", type=int, default=5, help="timed runs of each help (interleaved)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each help first")
    args = p.parse_args()
    sides = {"this": REPO} | ({"baseline": args.baseline.resolve()} if args.baseline else {})
    argvs = commands()
    header("ptdist --help and every command's --help: wall seconds per fresh process",
           {"sides": ", ".join(f"{name}={path}" for name, path in sides.items()),
            "commands": len(argvs), "reps": args.reps, "warmup": args.warmup})
    for name, path in sides.items():
        print(f"heavy libraries `ptdist --help` imports ({name}): {heavy_imports(path)}")
    cpu: dict[str, list[float]] = {_case(side, argv): [] for argv in argvs for side in sides}
    timed = interleaved({_case(side, argv): help_run(path, argv, cpu[_case(side, argv)])
                         for argv in argvs for side, path in sides.items()},
                        args.reps, args.warmup)

    def median(side: str, argv: tuple[str, ...]) -> float:
        return timed[_case(side, argv)].median

    def cpu_median(side: str, argv: tuple[str, ...]) -> float:  # the timed runs only
        return statistics.median(cpu[_case(side, argv)][args.warmup:])

    rows = []
    for argv in argvs:
        row = [" ".join(("ptdist", *argv, "--help"))]
        for side in sides:
            row += [median(side, argv), cpu_median(side, argv)]
        if args.baseline:
            row.append(f"{median('baseline', argv) / median('this', argv):.1f}x")
        rows.append(row)
    print(table(["command", *(f"{side} {what}" for side in sides
                              for what in ("wall s", "CPU s"))]
                + (["baseline / this (wall)"] if args.baseline else []), rows))
    slowest = max(median("this", argv) for argv in argvs)
    print(f"slowest help of this checkout: {slowest:.3f} s wall, "
          f"{'under' if slowest < LIMIT_S else 'NOT under'} {LIMIT_S} s at this load; "
          f"CPU {max(cpu_median('this', argv) for argv in argvs):.3f} s")
    load()


if __name__ == "__main__":
    main()
