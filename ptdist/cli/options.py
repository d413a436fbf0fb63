"""What every command shares: the option groups (one vocabulary: --store, --data-dir,
--eval-limit, --local/--address, --json, --verbose/--quiet mean the same everywhere), the help
texts that name the presets and tasks, and the one place results are printed."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from typing import Any, Callable, TypeVar

from ptdist.logs import global_rank

log = logging.getLogger(__name__)

Command = Callable[[argparse.Namespace], None]
S = TypeVar("S")


class Renamed(argparse._StoreAction):
    """An option with a new name and, for one release, its old names (``deprecated``): they
    still work, each use logs one line naming the new option, and the help shows only the new
    name (`ptdist.cli._Formatter`)."""

    def __init__(self, option_strings: list[str], deprecated: tuple[str, ...] = (),
                 **kwargs: Any) -> None:
        super().__init__(option_strings, **kwargs)
        self.deprecated = deprecated

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        if option_string in self.deprecated:
            log.warning(f"{option_string} is deprecated and goes in the next release; use "
                        f"{self.option_strings[0]}")
        super().__call__(parser, namespace, values, option_string)


def add_renamed(p: argparse.ArgumentParser, name: str, *old: str, **kwargs: Any) -> None:
    """Option ``name`` (with argparse's ``kwargs``) that also answers to its ``old`` names,
    hidden and deprecated (`Renamed`)."""
    p.add_argument(name, *old, action=Renamed, deprecated=old, **kwargs)


def emit(args: argparse.Namespace, human: str | None, payload: dict[str, Any]) -> None:
    """A command's result on stdout, from global rank 0: the human summary, then (--json) one
    JSON object as the last line. Everything else goes through the logger to stderr
    (`ptdist.logs`)."""
    if global_rank()[0] != 0:
        return
    lines = [] if human is None else [human]
    if args.json:
        lines.append(json.dumps(payload, default=_plain))
    if lines:
        print("\n".join(lines), flush=True)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    return str(value)


def model_help(what: str = "the model") -> str:
    from ptdist.backbones import PRESETS

    return (f"{what}: a preset ({', '.join(PRESETS)}; `ptdist models`), a local model folder, "
            "pkg:PACKAGE/path, or a hub id")


def task_help(what: str = "the task") -> str:
    from ptdist.tasks import task_names

    return (f"{what}: a registered task ({', '.join(task_names())}; "
            "`ptdist tasks`), a task YAML path, or the name of a task defined in YAML that "
            "the store has prompts of")


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="also print one JSON object as the last line of stdout")
    talk = p.add_mutually_exclusive_group()
    talk.add_argument("--verbose", dest="talk", action="store_const", const="verbose",
                      default="default", help="also ptdist's debug lines and the libraries' own "
                                              "logs (transformers, datasets, DeepSpeed, Ray)")
    talk.add_argument("--quiet", dest="talk", action="store_const", const="quiet",
                      help="only warnings and errors on stderr (the result still on stdout)")


def add_store(p: argparse.ArgumentParser, spec: bool = False) -> None:
    what = "override the spec's storage_path" if spec else \
        "the store folder (default: $PTDIST_STORE or ./store)"
    p.add_argument("--store", default=None, help=what)
    if spec:  # the option's name before the CLI had one vocabulary
        p.add_argument("--storage-path", dest="store", help=argparse.SUPPRESS)


def add_data(p: argparse.ArgumentParser, spec: bool = False) -> None:
    p.add_argument("--data-dir", default=None,
                   help="override the spec's data_dir" if spec else
                   "folder with <task>/train.jsonl and <task>/eval.jsonl (or .json/.csv/.parquet) "
                   "read instead of the hub (default: $PTDIST_DATA_DIR)")


def add_eval(p: argparse.ArgumentParser) -> None:
    """How prompts are scored (EvalSettings fields, with their defaults)."""
    from ptdist.training.config import EvalSettings

    p.add_argument("--eval-limit", type=int, default=EvalSettings.eval_limit,
                   help="evaluation examples per task (0: the whole split; default "
                        "%(default)s)")
    p.add_argument("--batch-size", type=int, default=EvalSettings.batch_size,
                   help="examples x prompts per forward pass (default %(default)s)")


def scoring(args: argparse.Namespace, settings: type[S], ds_config: str | None = None) -> S:
    """The scoring ``settings`` (EvalSettings, MatrixSettings) of `add_eval`, `add_precision`
    and `add_data`."""
    return settings(eval_limit=args.eval_limit or None, batch_size=args.batch_size,
                    data_dir=args.data_dir, precision=args.precision, ds_config=ds_config)


def add_precision(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=("bf16", "fp32"), default=None,
                   help="precision of the frozen model (default: the one the prompts were "
                        "trained in, from their manifests)")


def add_execution(p: argparse.ArgumentParser, spec: bool = False) -> None:
    """Where a command's jobs run: Ray by default, --local in this process."""
    p.add_argument("--local", action="store_true",
                   help="run the jobs one after another in this process instead of on Ray")
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray started "
                        "for this command)")
    p.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many jobs at once (default: "
                        + ("the spec's, else " if spec else "") + "as many as Ray holds)")
    if spec:
        p.add_argument("--ignore-memory-plan", action="store_true",
                       help="launch runs even where the memory planner says they do not fit "
                            "their GPU (by default such a spec is refused before anything "
                            "runs, with the plan's numbers; docs/scale.md)")
        p.add_argument("--no-pack", action="store_true",
                       help="train every prompt run as a job of its own (the spec's `pack: 1`); "
                            "by default runs of one model are packed where that is faster "
                            "(docs/sweeps.md)")
    else:  # a spec sets its own max_failures
        from ptdist.orchestration.execution.graph import Execution

        p.add_argument("--max-failures", type=int, default=Execution.max_failures,
                       help="retries of a job that fails for another reason than a user error "
                            "(default %(default)s; docs/architecture.md)")


def add_job_resources(p: argparse.ArgumentParser) -> None:
    # Left unset unless given, so that `Resources` fills its own defaults (importing it here
    # would load torch for every command line).
    p.add_argument("--gpus", type=int, help="GPUs per job (default 0)")
    p.add_argument("--cpus", type=float, help="CPUs per job (default 1)")


def _given_resources(args: argparse.Namespace) -> dict[str, Any]:
    """The --gpus/--cpus given, as `Resources` fields."""
    return {k: getattr(args, k) for k in ("gpus", "cpus") if getattr(args, k) is not None}


def execution(args: argparse.Namespace):
    from ptdist.orchestration.execution.graph import Execution

    return Execution(local=args.local, address=args.address,
                     max_concurrent=args.max_concurrent,
                     max_failures=getattr(args, "max_failures", Execution.max_failures),
                     ignore_memory_plan=getattr(args, "ignore_memory_plan", False))


def add_sharding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--shard", type=int, default=1, metavar="N",
                   help="partition the model over a Ray Train worker group of N processes on "
                        "one node (DeepSpeed ZeRO-3, --ds-config), each holding 1/N of its "
                        "weights and --gpus/N GPUs: for a model whose weights do not fit one "
                        "GPU (default 1: the whole model in one process)")
    p.add_argument("--ds-config", default="zero3",
                   help="the ZeRO-3 config --shard partitions the model under (ds_configs/ "
                        "name or JSON path; default zero3; the precision is the prompts')")


def frozen_model_job(args: argparse.Namespace):
    """The resources of a job that runs a frozen model (--gpus/--cpus, --shard) and the
    DeepSpeed config it partitions the model under (None: whole, in one process)."""
    from ptdist.errors import PtdistError
    from ptdist.orchestration.spec.sweep_spec import Resources

    if args.shard < 1:
        raise PtdistError(f"--shard {args.shard}: give the number of processes the model is "
                          "partitioned over (1: the whole model in one process)")
    return (Resources(workers=args.shard, **_given_resources(args)),
            args.ds_config if args.shard > 1 else None)


def pack_override(args: argparse.Namespace) -> int | None:
    """The spec override of ``--no-pack``: every run its own job, or the spec's packing."""
    return 1 if args.no_pack else None


def job_resources(args: argparse.Namespace):
    """One job's resources from --gpus/--cpus; several GPUs mean one worker per GPU."""
    from ptdist.orchestration.spec.sweep_spec import Resources

    given = Resources(**_given_resources(args))
    return dataclasses.replace(given, workers=max(1, given.gpus))


def add_run_limits(p: argparse.ArgumentParser, settings: type) -> None:
    """The evaluation and data limits a prompt-tuning run and a projector share, with the
    defaults of ``settings`` (TrainConfig or ProjectorConfig)."""
    p.add_argument("--eval-every", type=int, default=settings.eval_every,
                   help="steps between evaluations (default %(default)s)")
    p.add_argument("--eval-limit", type=int, default=settings.eval_limit,
                   help="evaluation examples (0: the whole split; default %(default)s)")
    p.add_argument("--train-limit", type=int, default=settings.train_limit,
                   help="use a seeded subset of train")
    p.add_argument("--max-length", type=int, default=settings.max_length,
                   help="text tokens, prompt excluded (default %(default)s)")


def add_budget(p: argparse.ArgumentParser) -> None:
    """A prompt-tuning run's settings (TrainConfig fields, with their defaults)."""
    from ptdist.training.config import TrainConfig

    p.add_argument("--steps", type=int, default=TrainConfig.steps,
                   help="optimizer steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=TrainConfig.seed)
    p.add_argument("--lr", type=float, default=TrainConfig.lr,
                   help="peak learning rate (default %(default)s)")
    p.add_argument("--schedule", default=TrainConfig.schedule,
                   help="learning rate after the warm-up: constant (the paper's) or linear "
                        "decay to 0 (default %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=TrainConfig.warmup_steps,
                   help="linear warm-up steps (default: 10%% of --steps)")
    p.add_argument("--optimizer", default=TrainConfig.optimizer,
                   help="adamw or adam (weight decay as an L2 term; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=TrainConfig.batch_size,
                   help="global batch size over all processes (default %(default)s)")
    add_run_limits(p, TrainConfig)
    p.add_argument("--patience", type=int, default=TrainConfig.patience,
                   help="stop after this many evaluations without improvement")
    p.add_argument("--min-steps", type=int, default=TrainConfig.min_steps,
                   help="no early stop before this step (default %(default)s)")
    p.add_argument("--bucket-window", type=int, default=TrainConfig.bucket_window,
                   help="draw training batches from length buckets, regrouping the rows of "
                        "each window of this many batches by length (default %(default)s: off)")
    p.add_argument("--length-quantile", type=float, default=TrainConfig.length_quantile,
                   help="cut training texts at this quantile of the task's own token lengths, "
                        "e.g. 0.99 (capped by --max-length; default: cut at --max-length)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the backbone's training forward and backward "
                        "(another run: its rounding differs; benchmarks/RESULTS.md says "
                        "where it pays)")
    p.add_argument("--ds-config", default=TrainConfig.ds_config,
                   help="DeepSpeed config name in ds_configs/ or JSON path (default "
                        "%(default)s)")
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each layer's activations in the backward instead of "
                        "keeping them: less memory, the same prompt, +50%% compute (a step is "
                        "a forward F and a backward to the prompt of about F; the recomputed "
                        "forward adds F: 3F / 2F)")


def add_tolerance(p: argparse.ArgumentParser) -> None:
    """TPT's tolerance speed-up (docs/transfer.md)."""
    p.add_argument("--tolerance", type=float, default=0.99,
                   help="also read the speed-up at this fraction of vanilla PT's best score "
                        "(default 0.99)")


def budget(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings `add_budget` adds, as TrainConfig fields (ds_config apart)."""
    return dict(seed=args.seed, steps=args.steps, lr=args.lr, schedule=args.schedule,
                warmup_steps=args.warmup_steps, optimizer=args.optimizer,
                batch_size=args.batch_size, eval_every=args.eval_every,
                eval_limit=args.eval_limit or None, train_limit=args.train_limit,
                max_length=args.max_length, patience=args.patience, min_steps=args.min_steps,
                bucket_window=args.bucket_window, length_quantile=args.length_quantile,
                compile=args.compile,
                activation_checkpointing=args.activation_checkpointing)


def store_of(args: argparse.Namespace, writes: bool = True):
    """The store of --store; for a command that ``writes`` to it, one this process can write,
    checked before the command starts its work."""
    from ptdist.api.inputs import open_store

    return open_store(args.store, writes)
