"""Settings files (task YAML, sweep specs, studies) read and checked one way: each file's shape
is declared as pydantic models in strict mode, and the first mistake becomes one PtdistError
line naming the key path, the problem in plain words and, where one is known, the fix.

Used by ptdist.tasks and ptdist.orchestration alike, so it imports nothing else of ptdist but
the layer-0 modules beside it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, fields
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml
from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      ValidationError, WrapValidator, create_model)
from pydantic.fields import FieldInfo

from ptdist.errors import PtdistError
from ptdist.files import read_text

S = TypeVar("S", bound="Strict")


class Strict(BaseModel):
    """The shape of one YAML mapping. YAML already types its scalars, so a value of another
    type is a mistake to report, never to convert: "0.1" is no learning rate, 1.5 no step
    count, true no count at all. Only an int passes for a float (YAML reads `lr: 1` as one)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


def rule(holds: Callable[[Any], bool], problem: str) -> AfterValidator:
    """A check of one value, failing with ``problem`` (e.g. "must be a single word") unless
    ``holds(value)``; the message adds the key and the value."""
    def check(value: Any) -> Any:
        if not holds(value):
            raise ValueError(problem)
        return value
    return AfterValidator(check)


Text = Annotated[str, rule(lambda text: text.strip() != "", "must not be blank")]


def one_or_more(item: Any) -> Any:
    """A non-empty list of ``item``; a single value stands for a list of one (`seeds: 0`)."""
    return Annotated[list[item], BeforeValidator(lambda v: v if isinstance(v, list) else [v]),
                     Field(min_length=1)]


def as_written(shape: type[Strict]) -> Any:
    """A mapping checked against ``shape`` but kept (as a copy) the way the file wrote it: key
    order, `1` for a float. Its settings pass on to functions and content hashes unchanged."""
    def checked(value: Any, check: Callable[[Any], Any]) -> dict:
        check(value)
        return dict(value)
    return Annotated[shape, WrapValidator(checked)]


def dataclass_shape(cls: type, exclude: tuple[str, ...] = (), base: type[Strict] = Strict,
                    written: dict[str, tuple[Any, FieldInfo]] | None = None) -> type[Strict]:
    """The shape of a mapping of dataclass ``cls``'s fields but ``exclude``, with their types
    (constraints included: ``Annotated[int, Ge(0)]`` checks it) and defaults (a field without
    one is required), and the ``description`` of a field's metadata, which ends an error about
    its value: the keys a file may set follow the dataclass and cannot drift from it.
    ``written`` gives, in its place, a field a file writes otherwise than the dataclass holds
    it, as (type, `Field`)."""
    hints = get_type_hints(cls, include_extras=True)
    written = written or {}
    return create_model(f"{cls.__name__}Settings", __base__=base, **{
        f.name: written.get(f.name) or (hints[f.name], Field(
            ... if f.default is MISSING else f.default, description=f.metadata.get("description")))
        for f in fields(cls) if f.name not in exclude})


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words (an array, null...)."""
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null", dict: "an object"}
    return kinds.get(type(value), type(value).__name__)


# The most values a settings file may hold once its aliases are expanded: a study of a large
# grid holds a few hundred; an alias bomb (nested lists of aliases) expands to billions.
MAX_YAML_VALUES = 100_000


def read_yaml(path: Path, what: str, keys: Iterable[str]) -> dict:
    """The mapping in YAML file ``path`` (a ``what``: "sweep spec", "task file"...), with one
    clear error for a path that is not a regular UTF-8 file, bad YAML, a document that expands
    past `MAX_YAML_VALUES` values, or another shape."""
    text = read_text(path, what)
    try:
        raw = yaml.load(text, Loader=_BoundedLoader)
    except yaml.YAMLError as exc:
        raise PtdistError(f"{what} {path} is not valid YAML ({' '.join(str(exc).split())}); "
                          "fix the syntax") from None
    except _TooLarge as exc:
        raise PtdistError(f"{what} {path} {exc}") from None
    except RecursionError:
        raise PtdistError(f"{what} {path} nests its values deeper than ptdist reads; a "
                          "settings file is a few levels of mappings and lists") from None
    if not isinstance(raw, dict):
        raise PtdistError(f"{what} {path} must be a mapping with keys: {', '.join(keys)}")
    return raw


class _TooLarge(Exception):
    pass


class _BoundedLoader(yaml.SafeLoader):
    """yaml's safe loader that counts a document's values, aliases expanded, before it builds
    them: an alias repeats the node it names, so a few lines of aliases of aliases stand for
    billions of values, which any walk of the data (validation, hashing, a run per seed) would
    expand."""

    def construct_document(self, node: yaml.Node) -> Any:
        _count_values(node)
        return super().construct_document(node)


def _count_values(root: yaml.Node) -> int:
    """The values under ``root`` with every alias expanded (each node counted once per path to
    it), computed once per node; `_TooLarge` past `MAX_YAML_VALUES` or for a node that
    contains itself."""
    def children(node: yaml.Node) -> list[yaml.Node]:
        if isinstance(node, yaml.MappingNode):
            return [part for pair in node.value for part in pair]
        return list(node.value) if isinstance(node, yaml.SequenceNode) else []

    counts: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # depth first without recursion: a deep document is no recursion error here
        node, finished = stack.pop()
        if finished:
            counts[id(node)] = 1 + sum(counts[id(c)] for c in children(node))
            open_nodes.discard(id(node))
            if counts[id(node)] > MAX_YAML_VALUES:
                raise _TooLarge(f"expands to more than {MAX_YAML_VALUES:,} values through its "
                                f"aliases (line {node.start_mark.line + 1}), the most a "
                                "settings file may hold; write the lists out, or split the "
                                "work into several files")
        elif id(node) not in counts:
            if id(node) in open_nodes:
                raise _TooLarge(f"holds itself through an alias (line "
                                f"{node.start_mark.line + 1}), so its values never end; "
                                "remove that alias")
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children(node) if id(c) not in counts)
    return counts[id(root)]


@contextmanager
def located(where: str, docs: str | None = None) -> Iterator[None]:
    """Put ``where`` (a file, a built-in) in front of a PtdistError raised inside, and the page
    documenting the format after it."""
    try:
        yield
    except PtdistError as exc:
        raise PtdistError(f"{where}: {exc}" + (f" (see {docs})" if docs else "")) from None


def validate(shape: type[S], data: Any) -> S:
    """``data`` as ``shape``; the first mistake in it raises one PtdistError line."""
    try:
        return shape.model_validate(data)
    except ValidationError as exc:
        raise PtdistError(_explain(exc.errors(include_url=False)[0], shape)) from None


_EXPECTED = {"int_type": "an integer", "float_type": "a number", "string_type": "a string",
             "bool_type": "true or false", "list_type": "a list", "dict_type": "a mapping",
             "model_type": "a mapping"}
_BOUNDS = {("greater_than", 0): "positive", ("greater_than_equal", 0): "non-negative"}
_YAML_BOOLS = "quote it: YAML reads yes, no, on, off, true and false as booleans"


def _explain(error: dict, shape: type[Strict]) -> str:
    """A pydantic error as "problem; fix", in the file's own terms."""
    loc, kind = error["loc"], error["type"]
    if kind == "extra_forbidden":
        allowed = list(_fields(_at(shape, loc[:-1])[0]))
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return (f"unknown key '{loc[-1]}' in {_path(loc[:-1]) or 'top level'}"
                + (f" (did you mean '{close[0]}'?)" if close else "")
                + f"; allowed: {', '.join(allowed)}")
    declared, field = _at(shape, loc)
    if kind == "missing":
        problem = f"missing required key '{loc[-1]}'" + (
            f" in {_path(loc[:-1])}" if len(loc) > 1 else "")
    else:
        problem = f"{_subject(loc)} {_must(error, declared)} (got {_short(error['input'])})"
    fix = field.description if field is not None else None
    if kind == "string_type" and isinstance(error["input"], bool):
        fix = _YAML_BOOLS
    elif fix is None and _fields(declared):
        fix = f"keys: {', '.join(_fields(declared))}"
    return problem + (f"; {fix}" if fix else "")


def _subject(loc: tuple) -> str:
    if not loc:
        return "the top level"
    if loc[-1] == "[key]":  # pydantic's mark for a mapping's key (rather than its value)
        return f"key {loc[-2]!r} in {_path(loc[:-2]) or 'top level'}"
    return f"'{_path(loc)}'"


def _must(error: dict, declared: Any) -> str:
    kind, ctx = error["type"], error.get("ctx", {})
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    if kind == "literal_error":
        return f"must be {ctx['expected']}"
    bound = _BOUNDS.get((kind, ctx.get("gt", ctx.get("ge"))))
    if bound:
        return f"must be a {bound} {'integer' if declared is int else 'number'}"
    return f"must be {_EXPECTED[kind]}" if kind in _EXPECTED else error["msg"]


def _at(shape: Any, loc: tuple) -> tuple[Any, FieldInfo | None]:
    """The type declared at ``loc`` under ``shape``, and the field declaring it (None for a
    list item or a mapping's value)."""
    field = None
    for part in loc:
        keys = _fields(shape)
        if keys:
            field = keys.get(part)
            shape = field.annotation if field else Any
        else:
            shape, field = (get_args(_bare(shape)) or (Any,))[-1], None
    return _bare(shape), field


def _bare(declared: Any) -> Any:
    """``declared`` without Annotated metadata and without `| None`."""
    while get_origin(declared) in (Annotated, Union, UnionType):
        declared = next(a for a in get_args(declared) if a is not type(None))
    return declared


def _fields(declared: Any) -> dict[str, FieldInfo]:
    """The keys a mapping of type ``declared`` may hold, with their fields (none if it is not
    a shape)."""
    declared = _bare(declared)
    if not (isinstance(declared, type) and issubclass(declared, BaseModel)):
        return {}
    return {f.alias or name: f for name, f in declared.model_fields.items()}


def _path(loc: tuple) -> str:
    """``("models", "t5", "resources")`` as models.t5.resources; list items as seeds[1]."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
