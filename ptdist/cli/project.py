"""`ptdist project train|eval|tpt|pairs|list`: cross-model transfer through projectors
(docs/projection.md). train and eval are one job each and run in this process; tpt and pairs
run their jobs on Ray unless --local."""

from __future__ import annotations

import argparse

from ptdist.cli.options import (add_budget, add_data, add_eval, add_execution, add_job_resources,
                                add_precision, add_renamed, add_run_limits, add_store,
                                add_tolerance, budget, emit, execution, job_resources, model_help,
                                pack_override, scoring, store_of, task_help)


def _settings(args: argparse.Namespace) -> dict:
    """The settings `_add_projector` adds, as ProjectorConfig fields."""
    return {"variant": args.variant, "hidden": args.hidden, "seed": args.seed,
            "steps": args.steps, "lr": args.lr, "schedule": args.schedule,
            "warmup_steps": args.warmup_steps, "verbalizer": args.verbalizer,
            "batch_size": args.batch_size, "eval_every": args.eval_every,
            "eval_limit": args.eval_limit or None, "train_limit": args.train_limit,
            "max_length": args.max_length}


def train(args: argparse.Namespace) -> None:
    from ptdist.api.projection import train_projector
    from ptdist.projection.config import ProjectorConfig

    m = train_projector(ProjectorConfig(
        source_model=args.source_model, target_model=args.target_model, mode=args.mode,
        tasks=tuple(args.train_tasks), ds_config=args.ds_config, data_dir=args.data_dir,
        **_settings(args)), args.store)
    result = (f"distance {m.initial_distance:.4f} -> {m.distance:.4f} over {m.pairs} "
              "prompt pairs" if m.mode == "distance" else
              f"{m.metric} = {m.score:.2f} on {', '.join(m.tasks)} (best at step "
              f"{m.best_step})")
    emit(args, f"projector {m.id}: {args.source_model} -> {args.target_model} "
               f"({args.mode}, {m.shape['variant']}): {result}", m.to_json())


def evaluate(args: argparse.Namespace) -> None:
    from ptdist.api.projection import evaluate_projector
    from ptdist.scoring import EvalSettings

    rows = evaluate_projector(args.projector, args.tasks, store=args.store,
                              settings=scoring(args, EvalSettings))
    lines = [f"{'task':<22}{'projected':>10}{'untrained':>10}{'own':>8}{'relative':>10}"
             f"{'distance':>10}  trained on it"]
    lines += [f"{r.task:<22}{r.score:>10.2f}{r.untrained_score:>10.2f}"
              f"{r.own_score:>8.2f}{r.relative or 0:>9.1f}%{r.distance:>10.4f}  "
              f"{'yes' if r.in_training else 'no'}" for r in rows]
    emit(args, "\n".join(lines), {"rows": rows})


def tpt(args: argparse.Namespace) -> None:
    from ptdist.api.projection import tpt_model
    from ptdist.cli.transfer import show_tpt

    show_tpt(args, tpt_model(args.projector, args.target_tasks,
                             train=dict(budget(args), data_dir=args.data_dir,
                                        ds_config=args.ds_config),
                             tolerance=args.tolerance, store=args.store,
                             execution=execution(args), resources=job_resources(args)))


def pairs(args: argparse.Namespace) -> None:
    from ptdist.api.projection import project_pairs
    from ptdist.orchestration.execution.graph import describe_jobs, require_success
    from ptdist.orchestration.jobs.pairs import PairSettings

    settings = PairSettings(args.mode, tuple(args.train_tasks), tuple(args.eval_tasks or ()),
                            _settings(args))
    outcome = project_pairs(args.spec, settings, store=args.store, data_dir=args.data_dir,
                            execution=execution(args), pack=pack_override(args),
                            dry_run=args.dry_run)
    if args.dry_run:
        emit(args, describe_jobs(outcome.jobs), {"spec": outcome.spec.name, "dry_run": True})
        return
    needs = {job.id: list(job.needs) for job in outcome.jobs}
    jobs = [{"id": o.id, "needs": needs[o.id], "status": o.status, "error": o.error,
             "attempts": o.attempts, "started": o.started, "finished": o.finished}
            for o in outcome.graph.jobs]
    emit(args, f"cross-model table: {outcome.table}", {"table": str(outcome.table), "jobs": jobs})
    require_success(outcome.graph)


def list_projectors(args: argparse.Namespace) -> None:
    rows = store_of(args, writes=False).projectors.manifests()
    lines = [f"{r.id:<18}{r.source_model} -> {r.target_model} ({r.mode}, "
             f"{r.shape['variant']}) on {', '.join(r.tasks)}" for r in rows]
    emit(args, "\n".join(lines) if rows else "the store holds no projectors yet",
         {"projectors": rows})


def _add_projector(p: argparse.ArgumentParser) -> None:
    """A projector's settings (ProjectorConfig fields, with their defaults)."""
    from ptdist.projection.config import MODES, VARIANTS, VERBALIZERS, ProjectorConfig

    p.add_argument("--mode", choices=MODES, required=True,
                   help="distance: fit the target's own prompts; task: tune through the target "
                        "model on the training tasks (the paper: several of one type)")
    p.add_argument("--variant", choices=VARIANTS, default=ProjectorConfig.variant,
                   help="flat: the reference MLP over the flattened prompt; token: per token "
                        "(default %(default)s)")
    p.add_argument("--hidden", type=int, default=ProjectorConfig.hidden,
                   help="hidden units (default %(default)s)")
    p.add_argument("--steps", type=int, default=ProjectorConfig.steps,
                   help="optimizer steps (default %(default)s)")
    p.add_argument("--seed", type=int, default=ProjectorConfig.seed)
    p.add_argument("--lr", type=float, default=ProjectorConfig.lr,
                   help="learning rate (default %(default)s)")
    p.add_argument("--schedule", default=ProjectorConfig.schedule,
                   help="task mode: learning rate after the warm-up, constant (the reference's) "
                        "or linear decay to 0 (default %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=ProjectorConfig.warmup_steps,
                   help="task mode: linear warm-up steps (default: 10%% of --steps)")
    p.add_argument("--verbalizer", choices=VERBALIZERS, default=ProjectorConfig.verbalizer,
                   help="task mode: read each task's classes with its own label words, or all "
                        "tasks' through the union of their words (the reference's; default "
                        "%(default)s)")
    p.add_argument("--batch-size", type=int, default=ProjectorConfig.batch_size,
                   help="prompt pairs (distance) or examples of each task (task) per step "
                        "(default %(default)s)")
    add_run_limits(p, ProjectorConfig)


def register(command, sub) -> None:
    from ptdist.training.config import TrainConfig

    project = sub.add_parser("project", help="cross-model transfer: projectors, TPT_model",
                             description="project prompts of one model to another "
                                         "(docs/projection.md)")
    steps = project.add_subparsers(dest="project_command", required=True, metavar="STEP")
    t = command("train", train, "train a projector from stored prompts",
                "train a projector SOURCE -> TARGET in this process from the prompts the store "
                "holds of both models on --train-tasks", group=steps)
    add_renamed(t, "--source-model", "--source", required=True,
                help=model_help("the model whose prompts are projected"))
    add_renamed(t, "--target-model", "--target", required=True,
                help=model_help("the model they are projected to"))
    add_renamed(t, "--train-tasks", "--tasks", nargs="+", required=True,
                help=task_help("the tasks the projector trains on"))
    t.add_argument("--ds-config", default=TrainConfig.ds_config,
                   help="task mode: DeepSpeed config of the target model (default %(default)s)")
    _add_projector(t)
    add_data(t)
    add_store(t)
    e = command("eval", evaluate, "projected prompts zero-shot on the target model",
                "score the source model's best prompt of each task, projected, on the target "
                "model, beside the untrained projector and the target's own prompt", group=steps)
    e.add_argument("--projector", required=True, help="projector id (`ptdist project list`)")
    e.add_argument("--tasks", nargs="+", required=True, help=task_help("tasks to evaluate on"))
    add_eval(e)
    add_precision(e)
    add_data(e)
    add_store(e)
    p = command("tpt", tpt, "TPT_model: PT initialised with projected prompts",
                "vanilla prompt tuning and prompt tuning initialised with the projected prompt, "
                "on the target model, with the speed-up to vanilla's best score", group=steps)
    p.add_argument("--projector", required=True, help="projector id (`ptdist project list`)")
    add_renamed(p, "--target-tasks", "--targets", nargs="+", required=True,
                help=task_help("the target tasks"))
    add_budget(p)
    add_tolerance(p)
    add_execution(p)
    add_job_resources(p)
    add_data(p)
    add_store(p)
    pp = command("pairs", pairs, "projectors for every ordered pair of a sweep's models",
                 "train (and first the prompts they need) and evaluate a projector for every "
                 "ordered pair of the sweep spec's models, each job starting when its inputs "
                 "are stored", group=steps)
    pp.add_argument("--spec", required=True,
                    help="sweep spec YAML with two or more models, or a preset's name")
    pp.add_argument("--train-tasks", nargs="+", required=True,
                    help=task_help("the tasks the projectors train on"))
    pp.add_argument("--eval-tasks", nargs="+", default=None,
                    help="tasks of the cross-model table (default: the spec's tasks)")
    pp.add_argument("--dry-run", action="store_true", help="list the jobs without running them")
    _add_projector(pp)
    add_execution(pp, spec=True)
    add_data(pp, spec=True)
    add_store(pp, spec=True)
    add_store(command("list", list_projectors, "list the projectors in a store", group=steps))
