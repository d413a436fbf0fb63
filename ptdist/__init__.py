"""ptdist: soft-prompt tuning and transfer on frozen language models, at cluster scale
(Su et al., "On Transferability of Prompt Tuning for Natural Language Understanding",
NAACL 2022).

The Python API (docs/python_api.md): every name below loads its module on first use, so
`import ptdist` is fast and imports no torch.

    import ptdist

    store = ptdist.Store("store")
    for task in ("sst2", "imdb"):
        config = ptdist.TrainConfig(model="tiny-roberta", task=task, steps=200)
        run = ptdist.train(config, store)
        ptdist.evaluate("tiny-roberta", run.prompt_id, task, store=store)
    here = ptdist.Execution(local=True)          # jobs in this process (default: on Ray)
    ptdist.transfer_matrix("tiny-roberta", ["sst2", "imdb"], store=store, execution=here)

Prompts: `train`, `evaluate`, `export_peft`. Cross-task transfer: `transfer_matrix`, `tpt`.
Indicators: `capture`, `indicators`, `embedding_indicators`, `correlate`. Cross-model:
`train_projector`, `evaluate_projector`, `tpt_model`, `project_pairs`. Many runs: `sweep`,
`replicate`. Where a new task should start: `recommend_sources`. Their settings:
`TrainConfig`, `EvalSettings`, `MatrixSettings`, `CaptureSettings`, `ProjectorConfig`,
`PairSettings`, `Execution`, `Resources`. What they
read and write: `Store`, its records (`PromptManifest`, `ProjectorManifest`) and tables
(`MatrixRow`, `IndicatorRow`, `CorrelationRow`, `TptSummaryRow`, `ProjectorEvalRow`). Every
user error is a `PtdistError` with one message that names the problem and the fix.
"""

from ptdist import logs as _logs
from ptdist.lazy import lazy_face

__version__ = "0.1.0"

_logs.configure()  # the ``ptdist`` logger's one handler: progress and warnings on stderr

__all__, __getattr__, __dir__ = lazy_face(__name__, {
    "api.prompts": ("train", "evaluate", "export_peft"),
    "api.transfer": ("transfer_matrix", "tpt", "TransferMatrix", "TptComparison"),
    "api.neurons": ("capture", "indicators", "embedding_indicators", "correlate",
                    "PairIndicators", "EmbeddingIndicators", "Correlation"),
    "api.projection": ("train_projector", "evaluate_projector", "tpt_model", "project_pairs"),
    "api.study": ("sweep", "replicate", "StudyOutcome"),
    "api.recommend": ("recommend_sources", "Recommended", "TptCheck"),
    "training.config": ("TrainConfig",),
    "scoring.settings": ("EvalSettings",),
    "training.run": ("TrainResult",),
    "transfer.matrix": ("MatrixSettings",),
    "neurons.collect": ("CaptureSettings", "CaptureResult"),
    "projection.config": ("ProjectorConfig",),
    "orchestration.jobs.pairs": ("PairSettings", "PairsOutcome"),
    "orchestration.execution.graph": ("Execution",),
    "orchestration.spec.sweep_spec": ("Resources", "load_spec"),
    "orchestration.spec.study_spec": ("load_study",),
    "orchestration.jobs.sweep": ("SweepOutcome",),
    "store": ("Store",),
    "store.manifests": ("PromptManifest", "ProjectorManifest"),
    "store.results": ("MatrixRow", "IndicatorRow", "CorrelationRow", "TptSummaryRow",
                      "ProjectorEvalRow"),
    "tasks": ("get_task", "list_tasks"),
    "errors": ("PtdistError",),
})
