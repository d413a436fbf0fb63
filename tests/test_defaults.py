"""Each setting's default is written once, in its settings class (`TrainConfig`,
`EvalSettings`, `ProjectorConfig`, `FailurePolicy`...); the command line, the spec and study
shapes and the settings that share it read it from there, so a default changed in one place is
changed everywhere (issue 30)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import ptdist

SETTINGS = ("max_failures", "eval_limit", "steps", "lr", "batch_size", "prompt_length",
            "eval_every", "max_length", "workers", "gpus", "cpus", "start_timeout_s")
PACKAGE = Path(ptdist.__file__).parent
# Values that only coincide with a setting's default: another thing's own setting.
OWN = {
    # The recipe that fits an MLM head (ptdist.offline), not a prompt-tuning run.
    "offline/mlm_head.py": "the MLM head's fitting recipe",
}


def _literal(node: ast.AST | None) -> bool:
    return (isinstance(node, ast.Constant) and isinstance(node.value, (int, float))
            and not isinstance(node.value, bool))


def _field_default(value: ast.AST | None) -> ast.AST | None:
    """The default a class field writes: its value, or the default of a dataclass `field(...)`
    or a pydantic `Field(...)`."""
    if isinstance(value, ast.Call) and getattr(value.func, "id", None) in ("field", "Field"):
        given = {k.arg: k.value for k in value.keywords}
        first = value.args[0] if value.args and value.func.id == "Field" else None
        return given.get("default", first)
    return value


def _defaults(tree: ast.AST):
    """(name, default node) of every default the module writes: class fields (plain, or by
    `field`/`Field`), function parameters, argparse options, and `.get`/`getattr` fallbacks."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            yield from ((s.target.id, _field_default(s.value)) for s in node.body
                        if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args
            yield from zip((a.arg for a in args[len(args) - len(node.args.defaults):]),
                           node.args.defaults)
            yield from zip((a.arg for a in node.args.kwonlyargs), node.args.kw_defaults)
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", None))
            first = node.args[0] if node.args else None
            if name == "add_argument" and isinstance(first, ast.Constant):
                dest = first.value.lstrip("-").replace("-", "_")
                for k in node.keywords:
                    dest = k.value.value if k.arg == "dest" else dest
                yield from ((dest, k.value) for k in node.keywords if k.arg == "default")
            fallback = node.args[1:] if name == "getattr" else node.args
            if name in ("get", "getattr") and len(fallback) == 2 and \
                    isinstance(fallback[0], ast.Constant):
                yield fallback[0].value, fallback[1]


def written_defaults(root: Path) -> dict[tuple[str, float], list[str]]:
    """Where each (setting, literal default) is written under ``root``."""
    found = defaultdict(list)
    for path in sorted(root.rglob("*.py")):
        where = path.relative_to(root).as_posix()
        if where in OWN:
            continue
        for name, value in _defaults(ast.parse(path.read_text(encoding="utf-8"))):
            if name in SETTINGS and _literal(value):
                found[name, value.value].append(f"{where}:{value.lineno}")
    return found


def test_each_setting_default_is_written_once():
    twice = {key: places for key, places in written_defaults(PACKAGE).items()
             if len(places) > 1}
    assert not twice, ("a default written in more than one place; keep the settings "
                       f"class's and read it elsewhere: {twice}")


def test_the_scan_finds_a_default_written_twice(tmp_path):
    """The scan sees each way a default is written (a field, a parameter, an option, a
    fallback), so the test above fails on any of them."""
    (tmp_path / "a.py").write_text(
        "class C:\n    steps: int = 7\n"
        "class D:\n    steps: int = field(default=7)\n    lr: float = Field(7, gt=0)\n"
        "def f(steps=7): pass\n"
        "p.add_argument('--steps', default=7)\n"
        "x.get('steps', 7); getattr(x, 'steps', 7)\n"
        "p.add_argument('--n', dest='eval_every', default=5)\n")
    found = written_defaults(tmp_path)
    assert found["steps", 7] == ["a.py:2", "a.py:4", "a.py:6", "a.py:7", "a.py:8", "a.py:8"]
    assert found["lr", 7] == ["a.py:5"]
    assert found["eval_every", 5] == ["a.py:9"]


def test_the_command_line_reads_the_settings_defaults():
    from ptdist.cli import build_parser
    from ptdist.orchestration.execution.graph import Execution
    from ptdist.projection.config import ProjectorConfig
    from ptdist.scoring import EvalSettings
    from ptdist.training.config import TrainConfig

    parser = build_parser()
    train = parser.parse_args(["train", "--model", "m", "--task", "t"])
    assert (train.steps, train.lr, train.batch_size, train.eval_limit, train.prompt_length) == \
        (TrainConfig.steps, TrainConfig.lr, TrainConfig.batch_size, TrainConfig.eval_limit,
         TrainConfig.prompt_length)
    scored = parser.parse_args(["eval", "--model", "m", "--prompt", "p", "--task", "t"])
    assert (scored.eval_limit, scored.batch_size) == (EvalSettings.eval_limit,
                                                      EvalSettings.batch_size)
    projector = parser.parse_args(["project", "train", "--source-model", "a", "--target-model",
                                   "b", "--train-tasks", "t", "--mode", "task"])
    assert (projector.lr, projector.hidden, projector.steps) == (
        ProjectorConfig.lr, ProjectorConfig.hidden, ProjectorConfig.steps)
    tpt = parser.parse_args(["transfer", "tpt", "--model", "m", "--target-tasks", "a",
                             "--source-tasks", "b"])
    assert tpt.max_failures == Execution.max_failures
