"""The Python API: one function per thing a researcher does (train and evaluate a prompt, the
transfer matrix and TPT, capture, indicators and correlation, projectors and TPT_model, a
sweep, a study), each taking typed settings and returning typed results. `import ptdist`
exposes these names (docs/python_api.md); the command line (`ptdist.cli`) is a thin layer over
them that parses options and prints results.

Each function resolves its inputs (the store, the tasks, a model's prompts), checks them before
any model loads, runs its stage (in this process, or as jobs on Ray where it runs several:
`ptdist.orchestration`), draws its figures (`ptdist.reporting`) and returns what it stored.
"""
