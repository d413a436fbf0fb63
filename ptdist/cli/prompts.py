"""Commands about single runs and what the store holds: train, eval, export-peft, prompts,
tasks, models. Each is one job and runs in this process (`ptdist train` under torchrun or the
deepspeed launcher too)."""

from __future__ import annotations

import argparse

from ptdist.cli.options import (add_budget, add_data, add_eval, add_precision, add_store,
                                budget, emit, model_help, scoring, store_of, task_help)


def train(args: argparse.Namespace) -> None:
    from ptdist.api.prompts import train as train_run
    from ptdist.backbones.prompt_init import parse_init
    from ptdist.training import TrainConfig

    config = TrainConfig(model=args.model, task=args.task, prompt_length=args.prompt_length,
                         init=parse_init(args.init), ds_config=args.ds_config,
                         data_dir=args.data_dir, **budget(args))
    result = train_run(config, args.store)
    how = "already in the store, not retrained" if result.skipped else (
        f"trained {result.steps_run} steps in {result.wall_time_s:.1f}s"
        + (f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""))
    emit(args, f"{result.task} on {result.model}: {result.metric} = {result.score:.2f} "
               f"(best at step {result.best_step}; {how})\nprompt id: {result.prompt_id} "
               f"(store {result.store})", result.to_dict())


def evaluate(args: argparse.Namespace) -> None:
    from ptdist.api.prompts import evaluate as score
    from ptdist.scoring import EvalSettings

    metrics = score(args.model, args.prompt, args.task, store=args.store,
                    settings=scoring(args, EvalSettings))
    summary = " ".join(f"{k}={v:.2f}" for k, v in metrics.items())
    emit(args, f"prompt {args.prompt} on {args.task} with {args.model}: {summary}",
         {"prompt": args.prompt, "task": args.task, "model": args.model, "metrics": metrics})


def export_peft(args: argparse.Namespace) -> None:
    from ptdist.api.prompts import export_peft as export

    out = export(args.prompt, args.out_dir, store=args.store, base_model=args.base_model)
    emit(args, f"wrote PEFT prompt-tuning adapter to {out} "
               "(load with peft.PeftModel.from_pretrained(base_model, that folder))",
         {"prompt": args.prompt, "adapter_dir": str(out)})


def tasks(args: argparse.Namespace) -> None:
    from ptdist.tasks import list_tasks

    records = list_tasks()
    lines = [f"{'name':<22}{'type':<14}{'kind':<16}{'metric':<14}source"]
    lines += [f"{t.name:<22}{t.type:<14}{t.kind:<16}{t.primary_metric:<14}{t.source_label}"
              for t in records]
    lines.append("\nA task argument may also be the path of a task YAML file (docs/tasks.md).")
    emit(args, "\n".join(lines), {"tasks": [t.name for t in records]})


def models(args: argparse.Namespace) -> None:
    from ptdist.backbones import PRESETS

    lines = [f"{name:<16}{p.kind:<10}{p.description}" for name, p in PRESETS.items()]
    lines.append("\nAlso: any Hugging Face hub id or local folder of an encoder MLM (RoBERTa, "
                 "BERT) or an encoder-decoder (T5 v1.0 / v1.1), e.g. roberta-base, t5-base, "
                 "google/t5-v1_1-xxl.")
    emit(args, "\n".join(lines), {"presets": list(PRESETS)})


def prompts(args: argparse.Namespace) -> None:
    if args.check:
        return check(args)
    rows = store_of(args, writes=False).prompts.manifests()
    lines = [f"{'id':<18}{'model':<16}{'task':<22}{'seed':<6}{'steps':<7}score"]
    lines += [f"{r.id:<18}{r.model:<16}{r.task:<22}{r.seed:<6}{r.steps:<7}"
              f"{r.metric}={r.score:.2f}" for r in rows]
    emit(args, "\n".join(lines) if rows else "the store holds no prompts yet",
         {"prompts": rows})


def check(args: argparse.Namespace) -> None:
    """Every prompt and projector record: manifest, tensor file, checksum and contents."""
    from ptdist.errors import PtdistError

    store = store_of(args, writes=False)
    found = [(records.kind, c) for records in (store.prompts, store.projectors)
             for c in records.check()]
    lines = [f"{'record':<11}{'id':<18}status"]
    lines += [f"{kind:<11}{c.id:<18}" + (f"DAMAGED: {c.problem}" if c.problem else
                                         "ok" + (f" ({c.note})" if c.note else ""))
              for kind, c in found]
    damaged = [c.id for _, c in found if c.problem]
    emit(args, "\n".join(lines) + f"\n{len(found)} record(s) checked, {len(damaged)} damaged",
         {"checked": len(found), "damaged": damaged})
    if damaged:
        raise PtdistError(f"{len(damaged)} of {len(found)} record(s) in store {store.root} are "
                          f"damaged: {', '.join(damaged)}; remove their folders and run the "
                          "commands that made them again, or restore them from a backup")


def register(command) -> None:
    from ptdist.backbones.prompt_init import INIT_FORMS
    from ptdist.training.config import TrainConfig

    t = command("train", train, "prompt-tune a frozen model on a task and store the prompt")
    t.add_argument("--model", required=True, help=model_help())
    t.add_argument("--task", required=True, help=task_help())
    t.add_argument("--prompt-length", type=int, default=TrainConfig.prompt_length,
                   help="soft tokens L (default %(default)s)")
    t.add_argument("--init", default=str(TrainConfig.init),
                   help=f"how the prompt starts: {INIT_FORMS} (default %(default)s)")
    add_budget(t)
    add_data(t)
    add_store(t)

    e = command("eval", evaluate, "score a stored prompt (or prompt file) on a task")
    e.add_argument("--model", required=True, help=model_help())
    e.add_argument("--prompt", required=True, help="store id, .safetensors file, or folder")
    e.add_argument("--task", required=True, help=task_help())
    add_eval(e)
    add_precision(e)
    e.add_argument("--limit", dest="eval_limit", type=int, default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)  # the option's name before --eval-limit
    add_data(e)
    add_store(e)

    x = command("export-peft", export_peft, "write a stored prompt as a PEFT adapter folder")
    x.add_argument("prompt", help="store id (`ptdist prompts`)")
    x.add_argument("out_dir")
    x.add_argument("--base-model", default=None,
                   help="base_model_name_or_path to record (default: the model it was trained on)")
    add_store(x)

    command("tasks", tasks, "list the registered tasks")
    command("models", models, "list the built-in model presets")
    p = command("prompts", prompts, "list the prompts in a store, or check every record")
    p.add_argument("--check", action="store_true",
                   help="verify every prompt and projector record (manifest, tensor file, "
                        "checksum, values) and name the damaged ones; exit status 2 if any")
    add_store(p)
