"""The `ptdist` command line. Every command that produces results prints a human summary and,
with --json, one JSON object as its last line of stdout; progress goes to stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from ptdist.errors import PtdistError
from ptdist.runtime import quiet_libraries

EXAMPLES = """examples:
  ptdist train --model tiny-roberta --task sst2 --steps 200 --data-dir data/
  torchrun --nproc_per_node 2 -m ptdist train --model roberta-base --task mnli --ds-config zero2
  ptdist eval --model tiny-roberta --prompt 3f2a9c1b0d4e5f60 --task sst2
  ptdist export-peft 3f2a9c1b0d4e5f60 adapters/sst2
  ptdist sweep --spec specs/tiny.yaml --storage-path $PWD/store
  ptdist transfer matrix --model roberta-base --tasks sst2 imdb mnli snli
  ptdist transfer tpt --model roberta-base --targets imdb --sources sst2 mnli --steps 2000
  ptdist neurons capture --model roberta-base && ptdist neurons indicators --model roberta-base
  ptdist neurons correlate --model roberta-base
  ptdist project pairs --spec specs/tiny.yaml --mode distance --train-tasks sst2 imdb
  ptdist project eval --projector 8e5fe180c2337c0f --tasks sst2 imdb
"""


def _is_rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _emit(args: argparse.Namespace, human: str, payload: dict[str, Any]) -> None:
    if not _is_rank0():
        return
    print(human)
    if args.json:
        print(json.dumps(payload, default=str))


def _train(args: argparse.Namespace) -> None:
    from ptdist.store.prompts import PromptStore
    from ptdist.training import TrainConfig, train

    config = TrainConfig(model=args.model, task=args.task, prompt_length=args.prompt_length,
                         init=args.init, ds_config=args.ds_config, data_dir=args.data_dir,
                         **_budget(args))
    result = train(config, PromptStore(args.store))
    how = "already in the store, not retrained" if result.skipped else (
        f"trained {result.steps_run} steps in {result.wall_time_s:.1f}s"
        + (f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""))
    _emit(args, f"{result.task} on {result.model}: {result.metric} = {result.score:.2f} "
                f"(best at step {result.best_step}; {how})\nprompt id: {result.prompt_id} "
                f"(store {result.store})", result.to_dict())


def _eval(args: argparse.Namespace) -> None:
    from ptdist.store.prompts import PromptStore
    from ptdist.training.evaluation import score_prompt

    metrics = score_prompt(args.model, PromptStore(args.store), args.prompt, args.task,
                           limit=args.limit or None, batch_size=args.batch_size,
                           data_dir=args.data_dir)
    summary = " ".join(f"{k}={v:.2f}" for k, v in metrics.items())
    _emit(args, f"prompt {args.prompt} on {args.task} with {args.model}: {summary}",
          {"prompt": args.prompt, "task": args.task, "model": args.model, "metrics": metrics})


def _export_peft(args: argparse.Namespace) -> None:
    from ptdist.store.peft_export import export_peft
    from ptdist.store.prompts import PromptStore

    out = export_peft(PromptStore(args.store), args.prompt, args.out_dir, args.base_model)
    _emit(args, f"wrote PEFT prompt-tuning adapter to {out} "
                "(load with peft.PeftModel.from_pretrained(base_model, that folder))",
          {"prompt": args.prompt, "adapter_dir": str(out)})


def _tasks(args: argparse.Namespace) -> None:
    from ptdist.tasks import list_tasks

    tasks = list_tasks()
    lines = [f"{'name':<22}{'type':<14}{'kind':<16}{'metric':<14}source"]
    lines += [f"{t.name:<22}{t.type:<14}{t.kind:<16}{t.primary_metric:<14}{t.source_label}"
              for t in tasks]
    lines.append("\nA task argument may also be the path of a task YAML file (docs/tasks.md).")
    _emit(args, "\n".join(lines), {"tasks": [t.name for t in tasks]})


def _models(args: argparse.Namespace) -> None:
    from ptdist.backbones import PRESETS

    lines = [f"{name:<16}{p.kind:<10}{p.description}" for name, p in PRESETS.items()]
    lines.append("\nAlso: any Hugging Face hub id or local folder of an encoder MLM (RoBERTa, "
                 "BERT) or an encoder-decoder (T5 v1.0 / v1.1), e.g. roberta-base, t5-base, "
                 "google/t5-v1_1-xxl.")
    _emit(args, "\n".join(lines), {"presets": list(PRESETS)})


def _prompts(args: argparse.Namespace) -> None:
    from ptdist.store.prompts import PromptStore

    rows = PromptStore(args.store).manifests()
    lines = [f"{'id':<18}{'model':<16}{'task':<22}{'seed':<6}{'steps':<7}score"]
    lines += [f"{r['id']:<18}{r['model']:<16}{r['task']:<22}{r['seed']:<6}{r['steps']:<7}"
              f"{r['metric']}={r['score']:.2f}" for r in rows]
    _emit(args, "\n".join(lines) if rows else "the store holds no prompts yet",
          {"prompts": rows})


def _sweep(args: argparse.Namespace) -> None:
    from ptdist.orchestration import load_spec, require_no_failures, run_sweep

    spec = load_spec(args.spec, storage_path=args.storage_path, data_dir=args.data_dir,
                     cluster=args.cluster, max_concurrent=args.max_concurrent)
    outcome = run_sweep(spec, address=args.address, dry_run=args.dry_run)
    if args.json and _is_rank0():
        print(json.dumps({"sweep": spec.name, "table": outcome.table, "trained": outcome.trained,
                          "runs": outcome.rows}, default=str))
    require_no_failures(outcome)


def _budget(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings `_add_budget` adds, as TrainConfig fields."""
    return dict(seed=args.seed, steps=args.steps, lr=args.lr, warmup_steps=args.warmup_steps,
                batch_size=args.batch_size, eval_every=args.eval_every,
                eval_limit=args.eval_limit or None, train_limit=args.train_limit,
                max_length=args.max_length, patience=args.patience)


def _run_resources(args: argparse.Namespace) -> dict[str, Any]:
    """A TPT run's resources as a sweep spec takes them: --gpus is a float (Ray tasks take a
    fraction of a GPU), a run takes a whole number, and the spec converts no type."""
    gpus = int(args.gpus) if args.gpus.is_integer() else args.gpus
    return {"gpus": gpus, "cpus": args.cpus}


def _transfer_matrix(args: argparse.Namespace) -> None:
    from ptdist.store.prompts import PromptStore
    from ptdist.transfer import transfer_matrix

    result = transfer_matrix(args.model, args.tasks, PromptStore(args.store),
                             data_dir=args.data_dir, eval_limit=args.eval_limit or None,
                             batch_size=args.batch_size, on_ray=not args.local,
                             address=args.address, gpus=args.gpus)
    width = max(len(t) for t in result.tasks) + 2
    lines = [f"relative performance (%) of {args.model}'s prompts; rows: source, columns: target",
             " " * width + "".join(f"{t[:10]:>11}" for t in result.tasks)]
    cells = {(r["source_task"], r["target_task"]): r["relative"] for r in result.rows}
    for source in result.tasks:
        lines.append(f"{source:<{width}}" + "".join(
            f"{cells[source, t]:>11.1f}" if cells[source, t] is not None else f"{'-':>11}"
            for t in result.tasks))
    lines.append(f"table: {result.table}\nheatmap: {result.heatmap}")
    _emit(args, "\n".join(lines), {"table": str(result.table), "heatmap": str(result.heatmap),
                                    "rows": result.rows})


def _transfer_tpt(args: argparse.Namespace) -> None:
    from ptdist.store.prompts import PromptStore
    from ptdist.transfer import run_tpt

    train = _budget(args)
    if args.prompt_length is not None:
        train["prompt_length"] = args.prompt_length
    result = run_tpt(args.model, args.targets, args.sources, PromptStore(args.store), train,
                     data_dir=args.data_dir, ds_config=args.ds_config,
                     resources=_run_resources(args), address=args.address)
    _emit(args, _tpt_lines(result), {"summary": result.summary,
                                     "folders": [str(f) for f in result.folders]})


def _tpt_lines(result) -> str:
    lines = []
    for r in result.summary:
        reached = (f"reaches vanilla's best ({r['vanilla_best']:.2f}) at step "
                   f"{r['steps_to_vanilla_best']}" if r["steps_to_vanilla_best"] is not None
                   else "never reaches vanilla's best")
        speed = f", speed-up {r['speedup']:.2f}x" if r["speedup"] is not None else ""
        lines.append(f"{r['target_task']}: {r['run']}: best {r['metric']} {r['best_score']:.2f} "
                     f"@ {r['best_step']}; {reached}{speed}")
    lines += [f"curves and tables: {folder}" for folder in result.folders]
    return "\n".join(lines)


def _neurons_capture(args: argparse.Namespace) -> None:
    from ptdist.neurons.collect import capture
    from ptdist.store.prompts import PromptStore

    result = capture(args.model, PromptStore(args.store), tasks=args.tasks,
                     protocol=args.protocol, examples=args.examples, data_dir=args.data_dir,
                     batch_size=args.batch_size, on_ray=not args.local, address=args.address,
                     chunks=args.chunks, gpus=args.gpus)
    _emit(args, f"captured {result.captured} prompt(s) ({result.skipped} already stored) "
                f"into {result.folder}",
          {"captured": result.captured, "skipped": result.skipped, "folder": str(result.folder)})


def _neurons_indicators(args: argparse.Namespace) -> None:
    from ptdist.neurons.pairs import pairwise_indicators
    from ptdist.store.prompts import PromptStore

    result = pairwise_indicators(args.model, PromptStore(args.store), args.protocol)
    prompts = len({r["prompt_a"] for r in result.rows})
    _emit(args, f"indicators for {prompts} prompts ({prompts * prompts} ordered pairs): "
                f"{result.table}\nheatmaps: " + ", ".join(str(p) for p in result.heatmaps),
          {"table": str(result.table), "heatmaps": [str(p) for p in result.heatmaps]})


def _neurons_correlate(args: argparse.Namespace) -> None:
    from ptdist.neurons.correlation import by_strength, correlate
    from ptdist.store.prompts import PromptStore

    result = correlate(args.model, PromptStore(args.store))
    lines = [f"{'indicator':<18}{'per target':>12}{'targets':>9}{'global':>9}{'pairs':>7}"]
    for r in by_strength(result.rows):
        per_target = "-" if r["spearman_per_target"] is None else f"{r['spearman_per_target']:.3f}"
        lines.append(f"{r['indicator']:<18}{per_target:>12}{r['targets']:>9}"
                     f"{r['spearman_global']:>9.3f}{r['pairs']:>7}")
    lines.append(f"table: {result.table}\nlayer-wise ON curve: {result.layer_curve}")
    _emit(args, "\n".join(lines), {"table": str(result.table), "rows": result.rows,
                                    "layer_curve": str(result.layer_curve)})


def _replicate(args: argparse.Namespace) -> None:
    from ptdist.orchestration.graph import require_success
    from ptdist.orchestration.replicate import report_dir, run_study
    from ptdist.orchestration.study import load_study, preset_path

    study = load_study(args.study or preset_path(args.preset), storage_path=args.storage_path,
                       data_dir=args.data_dir, max_concurrent=args.max_concurrent)
    if args.dry_run:
        _print_plan(study)
        return
    outcome = run_study(study, address=args.address)
    report = report_dir(study) / "report.md"
    _emit(args, f"report: {report}" if report.exists() else "no report (see the failures)",
          {"report": str(report), "jobs": [{"id": o.id, "status": o.status, "error": o.error}
                                           for o in outcome.jobs]})
    require_success(outcome)


def _print_plan(study) -> None:
    from ptdist.orchestration.estimate import describe_costs, study_costs
    from ptdist.orchestration.graph import describe_jobs
    from ptdist.orchestration.replicate import study_jobs

    spec = study.spec
    jobs = study_jobs(study)
    print(f"study {spec.name}: {len(spec.models)} model(s), {len(spec.tasks)} task(s), "
          f"{len(spec.seeds)} seed(s), {len(spec.inits)} init(s); store {spec.storage_path}")
    print(describe_jobs(jobs))
    print(describe_costs(study_costs(study, jobs)))


def _projector_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings `_add_projector` adds, as ProjectorConfig fields."""
    return {"variant": args.variant, "hidden": args.hidden, "seed": args.seed,
            "steps": args.steps, "lr": args.lr, "batch_size": args.batch_size,
            "eval_every": args.eval_every, "eval_limit": args.eval_limit or None,
            "train_limit": args.train_limit, "max_length": args.max_length}


def _project_train(args: argparse.Namespace) -> None:
    from ptdist.projection.config import ProjectorConfig, stored_inputs
    from ptdist.projection.training import train_projector
    from ptdist.store.prompts import default_store_root

    store = str(args.store or default_store_root())
    tasks = tuple(args.tasks)
    config = ProjectorConfig(
        source_model=args.source, target_model=args.target, mode=args.mode, tasks=tasks,
        source_prompts=stored_inputs(store, args.source, tasks),
        target_prompts=stored_inputs(store, args.target, tasks) if args.mode == "distance"
        else (), ds_config=args.ds_config, data_dir=args.data_dir, **_projector_settings(args))
    m = train_projector(config, store)
    result = (f"distance {m['initial_distance']:.4f} -> {m['distance']:.4f} over {m['pairs']} "
              "prompt pairs" if m["mode"] == "distance" else
              f"{m['metric']} = {m['score']:.2f} on {m['tasks'][0]} (best at step "
              f"{m['best_step']})")
    _emit(args, f"projector {config.projector_id}: {args.source} -> {args.target} "
                f"({args.mode}, {m['shape']['variant']}): {result}", m)


def _project_eval(args: argparse.Namespace) -> None:
    from ptdist.projection.evaluation import evaluate_projector
    from ptdist.store.prompts import default_store_root

    rows = evaluate_projector(str(args.store or default_store_root()), args.projector,
                              args.tasks, data_dir=args.data_dir,
                              eval_limit=args.eval_limit or None, batch_size=args.batch_size)
    lines = [f"{'task':<22}{'projected':>10}{'untrained':>10}{'own':>8}{'relative':>10}"
             f"{'distance':>10}  trained on it"]
    lines += [f"{r['task']:<22}{r['score']:>10.2f}{r['untrained_score']:>10.2f}"
              f"{r['own_score']:>8.2f}{r['relative'] or 0:>9.1f}%{r['distance']:>10.4f}  "
              f"{'yes' if r['in_training'] else 'no'}" for r in rows]
    _emit(args, "\n".join(lines), {"rows": rows})


def _project_tpt(args: argparse.Namespace) -> None:
    from ptdist.projection.tpt import run_tpt_model
    from ptdist.store.prompts import default_store_root

    result = run_tpt_model(str(args.store or default_store_root()), args.projector,
                           args.targets, _budget(args), data_dir=args.data_dir,
                           ds_config=args.ds_config,
                           resources=_run_resources(args),
                           address=args.address)
    _emit(args, _tpt_lines(result), {"summary": result.summary,
                                     "folders": [str(f) for f in result.folders]})


def _project_pairs(args: argparse.Namespace) -> None:
    from ptdist.orchestration import load_spec
    from ptdist.orchestration.graph import require_success
    from ptdist.orchestration.model_pairs import PairSettings, run_pairs

    spec = load_spec(args.spec, storage_path=args.storage_path, data_dir=args.data_dir,
                     max_concurrent=args.max_concurrent)
    settings = PairSettings(args.mode, tuple(args.train_tasks),
                            tuple(args.eval_tasks or spec.tasks), _projector_settings(args))
    outcome = run_pairs(spec, settings, address=args.address, dry_run=args.dry_run)
    jobs = [{"id": o.id, "needs": list(j.needs), "status": o.status, "error": o.error,
             "started": o.started, "finished": o.finished}
            for j, o in zip(outcome.jobs, outcome.graph.jobs)]
    if not args.dry_run:
        _emit(args, f"cross-model table: {outcome.table}",
              {"table": str(outcome.table), "jobs": jobs})
    require_success(outcome.graph)


def _project_list(args: argparse.Namespace) -> None:
    from ptdist.store.projectors import ProjectorStore
    from ptdist.store.prompts import default_store_root

    rows = ProjectorStore(args.store or default_store_root()).manifests()
    lines = [f"{r['id']:<18}{r['source_model']} -> {r['target_model']} ({r['mode']}, "
             f"{r['shape']['variant']}) on {', '.join(r['tasks'])}" for r in rows]
    _emit(args, "\n".join(lines) if rows else "the store holds no projectors yet",
          {"projectors": rows})


def _add_projector(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=("distance", "task"), required=True,
                   help="distance: fit the target's own prompts; task: tune through the target "
                        "model on the (one) training task")
    p.add_argument("--variant", choices=("flat", "token"), default="flat",
                   help="flat: the reference MLP over the flattened prompt; token: per token "
                        "(default flat)")
    p.add_argument("--hidden", type=int, default=768, help="hidden units (default 768)")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--batch-size", type=int, default=32,
                   help="prompt pairs (distance) or examples (task) per step (default 32)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument("--eval-limit", type=int, default=1000,
                   help="evaluation examples (0: the whole split; default 1000)")
    p.add_argument("--train-limit", type=int, default=None, help="use a seeded subset of train")
    p.add_argument("--max-length", type=int, default=128, help="text tokens (prompt excluded)")


def _add_budget(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps (default 1000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.01, help="peak learning rate (default 0.01)")
    p.add_argument("--warmup-steps", type=int, default=None, help="default: 10%% of --steps")
    p.add_argument("--batch-size", type=int, default=32,
                   help="global batch size over all processes (default 32)")
    p.add_argument("--eval-every", type=int, default=100, help="steps between evaluations")
    p.add_argument("--eval-limit", type=int, default=1000,
                   help="evaluation examples (0: the whole split; default 1000)")
    p.add_argument("--train-limit", type=int, default=None, help="use a seeded subset of train")
    p.add_argument("--max-length", type=int, default=128, help="text tokens (prompt excluded)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop after this many evaluations without improvement")
    p.add_argument("--ds-config", default="zero0",
                   help="DeepSpeed config name in ds_configs/ or JSON path (default zero0)")


def _add_ray(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    p.add_argument("--gpus", type=float, default=0, help="GPUs per Ray task or run (default 0)")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="also print one JSON object as the last line of stdout")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None,
                   help="folder with <task>/train.jsonl and <task>/eval.jsonl (or .csv/.parquet) "
                        "used instead of the hub (default: $PTDIST_DATA_DIR)")
    p.add_argument("--store", default=None, help="prompt store folder (default: $PTDIST_STORE "
                                                 "or ./store)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptdist", description="Soft-prompt tuning and transfer on frozen language models.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, fn: Callable, help: str, description: str | None = None,
                group=sub) -> argparse.ArgumentParser:
        """A (sub-)command of ``group`` that runs ``fn`` and takes --json."""
        p = group.add_parser(name, help=help, description=description or help)
        p.set_defaults(fn=fn)
        _add_common(p)
        return p

    t = command("train", _train, "prompt-tune a frozen model on a task and store the prompt")
    t.add_argument("--model", required=True, help="preset (tiny-roberta, tiny-t5, tiny-t5-v1_1), "
                                                  "hub id, or local model folder")
    t.add_argument("--task", required=True, help="registered task name or task YAML path")
    t.add_argument("--prompt-length", type=int, default=100, help="soft tokens L (default 100)")
    t.add_argument("--init", default="random",
                   help="random | vocab | text:WORDS | prompt:ID_OR_PATH (default random)")
    _add_budget(t)
    _add_data(t)

    e = command("eval", _eval, "score a stored prompt (or prompt file) on a task")
    e.add_argument("--model", required=True)
    e.add_argument("--prompt", required=True, help="store id, .safetensors file, or folder")
    e.add_argument("--task", required=True)
    e.add_argument("--limit", type=int, default=1000, help="examples (0: all; default 1000)")
    e.add_argument("--batch-size", type=int, default=64)
    _add_data(e)

    x = command("export-peft", _export_peft, "write a stored prompt as a PEFT adapter folder")
    x.add_argument("prompt", help="store id (or prompt file)")
    x.add_argument("out_dir")
    x.add_argument("--base-model", default=None,
                   help="base_model_name_or_path to record (default: the model it was trained on)")
    x.add_argument("--store", default=None)

    s = command("sweep", _sweep, "run a sweep spec's prompt-tuning runs on Ray (a local Ray "
                                 "unless --address or $RAY_ADDRESS names a cluster)")
    s.add_argument("--spec", required=True, help="sweep spec YAML (docs/sweeps.md)")
    s.add_argument("--address", default=None,
                   help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    s.add_argument("--storage-path", default=None, help="override the spec's storage_path")
    s.add_argument("--data-dir", default=None, help="override the spec's data_dir")
    s.add_argument("--cluster", default=None,
                   help="Ray cluster config whose node types runs must fit (e.g. cluster.yaml)")
    s.add_argument("--max-concurrent", type=int, default=None,
                   help="at most this many runs at once (default: as many as the cluster holds)")
    s.add_argument("--dry-run", action="store_true",
                   help="validate the spec and list the runs to do, without running them")

    transfer = sub.add_parser("transfer", help="cross-task transfer: the zero-shot matrix, TPT",
                              description="cross-task transfer of one model's prompts")
    steps = transfer.add_subparsers(dest="transfer_command", required=True, metavar="STEP")
    m = command("matrix", _transfer_matrix, "evaluate every task's best prompt on every task",
                "zero-shot transfer matrix: raw and relative scores (Parquet) and a heatmap "
                "(PNG) under STORE/transfer/", group=steps)
    m.add_argument("--model", required=True)
    m.add_argument("--tasks", nargs="+", required=True, help="task names or YAML paths (>= 2)")
    m.add_argument("--eval-limit", type=int, default=1000,
                   help="evaluation examples per target (0: all; default 1000)")
    m.add_argument("--batch-size", type=int, default=64,
                   help="examples x prompts per forward pass (default 64)")
    m.add_argument("--local", action="store_true",
                   help="evaluate in this process instead of one Ray task per target")
    _add_ray(m)
    _add_data(m)
    tpt = command("tpt", _transfer_tpt, "vanilla PT vs PT initialised from other tasks' prompts",
                  "TPT_task: vanilla prompt tuning and prompt tuning initialised from each "
                  "source prompt, on each target, with the speed-up to vanilla's best score",
                  group=steps)
    tpt.add_argument("--model", required=True)
    tpt.add_argument("--targets", nargs="+", required=True, help="target task names or YAMLs")
    tpt.add_argument("--sources", nargs="+", required=True,
                     help="source tasks (their best stored prompt) or prompt ids")
    tpt.add_argument("--prompt-length", type=int, default=None,
                     help="default: the source prompts' length")
    tpt.add_argument("--cpus", type=float, default=1, help="CPUs per run (default 1)")
    _add_budget(tpt)
    _add_ray(tpt)
    _add_data(tpt)

    neurons = sub.add_parser("neurons", help="activated neurons: capture, indicators, correlation",
                             description="activated FFN neurons of one model's prompts")
    nsteps = neurons.add_subparsers(dest="neurons_command", required=True, metavar="STEP")
    c = command("capture", _neurons_capture, "record FFN activations of stored prompts to "
                "Parquet", "record every layer's FFN activations of a model's stored prompts "
                "into STORE/activations/ (docs/neurons.md)", group=nsteps)
    c.add_argument("--model", required=True)
    c.add_argument("--tasks", nargs="+", default=None, help="only these tasks' prompts")
    c.add_argument("--protocol", choices=("prompt", "data"), default="prompt",
                   help="prompt: no task input (the paper's); data: mean over N examples")
    c.add_argument("--examples", type=int, default=32, help="N for the data protocol")
    c.add_argument("--batch-size", type=int, default=16,
                   help="examples per forward (data protocol), prompts per forward (prompt "
                        "protocol)")
    c.add_argument("--chunks", type=int, default=2, help="Ray tasks to split the prompts over")
    c.add_argument("--local", action="store_true", help="capture in this process, not on Ray")
    _add_ray(c)
    _add_data(c)
    i = command("indicators", _neurons_indicators, "indicators for every pair of captured "
                "prompts", "E_concat, E_avg, E_tokmean, Euclidean variants, ON and layer-wise "
                "ON for every pair of captured prompts", group=nsteps)
    i.add_argument("--model", required=True)
    i.add_argument("--protocol", choices=("prompt", "data"), default="prompt")
    i.add_argument("--store", default=None)
    r = command("correlate", _neurons_correlate, "Spearman correlation of indicators with "
                "transfer", "correlate each indicator with the zero-shot transfer matrix (per "
                "target and global) and plot layer-wise ON", group=nsteps)
    r.add_argument("--model", required=True)
    r.add_argument("--store", default=None)

    rep = command("replicate", _replicate, "the whole study as one Ray pipeline, with a report",
                  "prompt tuning, transfer matrix, activations, indicators and their "
                  "correlation, cross-model projectors and a report, as one dependency graph "
                  "on Ray; a re-run does only what is missing (docs/replicate.md)")
    which = rep.add_mutually_exclusive_group(required=True)
    which.add_argument("--study", help="study YAML (a sweep spec plus 'stages')")
    which.add_argument("--preset", help="a study in specs/: quickstart (offline, real models "
                                        "and data, CPU) or paper (the paper's grid, GPUs)")
    rep.add_argument("--address", default=None,
                     help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    rep.add_argument("--storage-path", default=None, help="override the study's storage_path")
    rep.add_argument("--data-dir", default=None, help="override the study's data_dir")
    rep.add_argument("--max-concurrent", type=int, default=None,
                     help="at most this many jobs at once")
    rep.add_argument("--dry-run", action="store_true", help="list the jobs without running them")

    project = sub.add_parser("project", help="cross-model transfer: projectors, TPT_model",
                             description="project prompts of one model to another "
                                         "(docs/projection.md)")
    psteps = project.add_subparsers(dest="project_command", required=True, metavar="STEP")
    pt = command("train", _project_train, "train a projector from stored prompts",
                 "train a projector SOURCE -> TARGET in this process from the prompts the store "
                 "holds of both models on --tasks", group=psteps)
    pt.add_argument("--source", required=True, help="the model whose prompts are projected")
    pt.add_argument("--target", required=True, help="the model they are projected to")
    pt.add_argument("--tasks", nargs="+", required=True,
                    help="training tasks (task mode: exactly one)")
    pt.add_argument("--ds-config", default="zero0",
                    help="task mode: DeepSpeed config of the target model (default zero0)")
    _add_projector(pt)
    _add_data(pt)
    pe = command("eval", _project_eval, "projected prompts zero-shot on the target model",
                 "score the source model's best prompt of each task, projected, on the target "
                 "model, beside the untrained projector and the target's own prompt",
                 group=psteps)
    pe.add_argument("--projector", required=True, help="projector id (`ptdist project list`)")
    pe.add_argument("--tasks", nargs="+", required=True, help="tasks to evaluate on")
    pe.add_argument("--eval-limit", type=int, default=1000,
                    help="evaluation examples per task (0: all; default 1000)")
    pe.add_argument("--batch-size", type=int, default=64)
    _add_data(pe)
    ptpt = command("tpt", _project_tpt, "TPT_model: PT initialised with projected prompts",
                   "vanilla prompt tuning and prompt tuning initialised with the projected "
                   "prompt, on the target model, with the speed-up to vanilla's best score",
                   group=psteps)
    ptpt.add_argument("--projector", required=True)
    ptpt.add_argument("--targets", nargs="+", required=True, help="target tasks")
    ptpt.add_argument("--cpus", type=float, default=1, help="CPUs per run (default 1)")
    _add_budget(ptpt)
    _add_ray(ptpt)
    _add_data(ptpt)
    pp = command("pairs", _project_pairs, "projectors for every ordered pair of a sweep's "
                 "models, on Ray", "train (and first the prompts they need) and evaluate a "
                 "projector for every ordered pair of the sweep spec's models, each job "
                 "starting when its inputs are stored", group=psteps)
    pp.add_argument("--spec", required=True, help="sweep spec YAML with two or more models")
    pp.add_argument("--train-tasks", nargs="+", required=True,
                    help="tasks the projectors train on (task mode: one)")
    pp.add_argument("--eval-tasks", nargs="+", default=None,
                    help="tasks of the cross-model table (default: the spec's tasks)")
    pp.add_argument("--address", default=None,
                    help="Ray cluster address (default: $RAY_ADDRESS, else start a local Ray)")
    pp.add_argument("--storage-path", default=None, help="override the spec's storage_path")
    pp.add_argument("--data-dir", default=None, help="override the spec's data_dir")
    pp.add_argument("--max-concurrent", type=int, default=None,
                    help="at most this many jobs at once (default: the spec's, else as many as "
                         "the cluster holds)")
    pp.add_argument("--dry-run", action="store_true", help="list the jobs without running them")
    _add_projector(pp)
    pl = command("list", _project_list, "list the projectors in a store", group=psteps)
    pl.add_argument("--store", default=None)

    command("tasks", _tasks, "list the registered tasks")
    command("models", _models, "list the built-in model presets")
    p = command("prompts", _prompts, "list the prompts in a store")
    p.add_argument("--store", default=None)
    return parser


def _without_launcher_rank(argv: list[str]) -> list[str]:
    # The deepspeed launcher inserts --local_rank=N (before the subcommand) and also sets
    # LOCAL_RANK in the environment, which is what ptdist reads.
    return [a for a in argv if not a.startswith(("--local_rank=", "--local-rank="))]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(_without_launcher_rank(argv))
    quiet_libraries()
    try:
        args.fn(args)
    except PtdistError as exc:
        print(f"ptdist: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False) and _is_rank0():
            print(json.dumps({"error": str(exc)}))
        sys.exit(2)
