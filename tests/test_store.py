import hashlib
import json
import os
import stat
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from ptdist.backbones import load_backbone
from ptdist.errors import PtdistError
from ptdist.store import Store
from ptdist.store.manifests import SCHEMA_VERSION, PromptManifest
from ptdist.store.peft_export import export_peft

ROWS = [{"text": "the movie was great", "label": 1}, {"text": "awful plot", "label": 0}]
WORDS = ["negative", "positive"]


def manifest(prompt_id: str, prompt: torch.Tensor, **fields) -> PromptManifest:
    """A manifest as training writes it, for a prompt made by hand."""
    base = dict(id=prompt_id, model="tiny-roberta", task="sst2", task_type="sentiment", seed=0,
                init="random", metric="accuracy", score=50.0, metrics={"accuracy": 50.0},
                steps=1, best_step=1, shape=list(prompt.shape), backbone_kind="mlm",
                precision="fp32", config={"task": "sst2", "max_length": 128}, history=[],
                world_size=1, zero_stage=0, resumed_from=None, wall_time_s=0.0, created=1.0,
                ptdist_version="0.1.0")
    return PromptManifest(**{**base, **fields})


def test_put_and_load_round_trip_only_safetensors_and_json(tmp_path):
    store = Store(tmp_path).prompts
    prompt = torch.randn(4, 8)
    folder = store.put(prompt, manifest("p1", prompt))
    assert torch.equal(store.tensor("p1"), prompt)
    checksum = hashlib.sha256((folder / "prompt.safetensors").read_bytes()).hexdigest()
    assert store.manifest("p1") == replace(manifest("p1", prompt), file_sha256=checksum)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "prompt.safetensors"]
    assert store.load(str(folder)).equal(prompt)
    assert store.load(str(folder / "prompt.safetensors")).equal(prompt)
    assert [m.id for m in store.manifests()] == ["p1"]
    assert json.loads((folder / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION


def test_a_manifest_of_the_previous_layout_still_loads(tmp_path):
    """A store written before manifests had a schema version (version 1: this file was
    written by ptdist 0fc1983 for a tiny-roberta run) reads as the typed record."""
    old = Path(__file__).with_name("data") / "manifest_v1.json"
    folder = tmp_path / "prompts" / json.loads(old.read_text())["id"]
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(old.read_text())
    m = Store(tmp_path).prompts.manifest(folder.name)
    assert (m.model, m.task, m.seed, m.score, m.shape) == \
        ("tiny-roberta", "sst2", 0, 68.75, [8, 64])
    assert m.task_ref == "sst2" and m.max_length == 128 and m.prompt_length == 8
    assert m.schema_version == SCHEMA_VERSION and m.file_sha256 is None
    assert m.init_rule == "seed"  # every prompt before manifests named their init rule
    assert [p.id for p in Store(tmp_path).prompts.manifests()] == [folder.name]  # listed


def test_a_manifest_of_a_newer_schema_is_refused_clearly(tmp_path):
    prompt = torch.randn(2, 4)
    store = Store(tmp_path).prompts
    folder = store.put(prompt, manifest("p1", prompt))
    data = json.loads((folder / "manifest.json").read_text())
    newer = SCHEMA_VERSION + 1
    (folder / "manifest.json").write_text(json.dumps(dict(data, schema_version=newer)))
    with pytest.raises(PtdistError, match=f"schema version {newer}, newer than this ptdist"):
        store.manifest("p1")


def test_unknown_prompt_and_foreign_file_are_clear_errors(tmp_path):
    store = Store(tmp_path).prompts
    with pytest.raises(PtdistError, match="neither a prompt id"):
        store.load("nope")
    bad = tmp_path / "weights.safetensors"
    from safetensors.torch import save_file
    save_file({"something": torch.zeros(2)}, bad)
    with pytest.raises(PtdistError, match="holds no prompt"):
        store.load(str(bad))
    pickle = tmp_path / "prompt.safetensors"
    pickle.write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(PtdistError, match="cannot read prompt file"):
        store.load(str(pickle))


@pytest.mark.parametrize("model", ["tiny-roberta", "tiny-t5", "tiny-t5-v1_1"])
def test_peft_adapter_gives_ptdist_logits(tmp_path, model):
    backbone = load_backbone(model)
    store = Store(tmp_path / "store").prompts
    prompt = torch.randn(6, backbone.hidden_size) * 0.5
    store.put(prompt, manifest("abc123", prompt, model=model, backbone_kind=backbone.kind))
    out = export_peft(store, "abc123", tmp_path / "adapter")
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 6

    batch = backbone.collate(ROWS, WORDS)
    ours = backbone.class_logits(prompt.expand(2, -1, -1), batch)
    peft_model = PeftModel.from_pretrained(backbone.model, str(out))
    peft_model.eval()
    with torch.no_grad():
        if backbone.kind == "mlm":
            logits = peft_model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"]).logits[:, 6]
        else:
            start = torch.zeros(2, 1, dtype=torch.long)
            logits = peft_model(input_ids=batch["input_ids"],
                                attention_mask=batch["attention_mask"],
                                decoder_input_ids=start).logits[:, 0]
    theirs = logits.gather(1, batch["label_ids"])
    assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
    # the adapter reads back as a prompt, too
    assert torch.equal(store.load(str(out)), prompt)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_store_files_follow_the_umask(tmp_path, umask):
    """A group sharing a store reads what any member wrote (umask 027: group read, no world)."""
    from ptdist.store.results import SweepRow
    from ptdist.store.tables import write_records

    before = os.umask(umask)
    try:
        store = Store(tmp_path / "store")
        prompt = torch.randn(2, 4)
        folder = store.prompts.put(prompt, manifest("p1", prompt))
        table = write_records(store.layout.sweep_table("s"), SweepRow, [])
    finally:
        os.umask(before)
    for path in (folder / "prompt.safetensors", folder / "manifest.json", table):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~umask
    assert not list(folder.glob(".*"))  # no temp file left behind


HOSTILE = ["../../../../tmp/x", "/tmp/x", "..", ".", "", "a/../../b", "~/x", "x\x00y",
           "C:\\x", "\u202e", "a" * 300, "google/t5-v1_1-xxl", "pkg:ptdist/models/x"]


@pytest.mark.parametrize("name", HOSTILE, ids=range(len(HOSTILE)))
def test_every_name_that_becomes_a_path_stays_inside_the_store(tmp_path, name):
    """Whatever a model, task, sweep, job or prompt id is called, the layout gives one path
    segment under the root: never a separator, `.`, `..`, a hidden name or one too long."""
    import inspect

    from ptdist.store.layout import segment

    layout = Store(tmp_path / "store").layout
    root = layout.root.resolve()
    for method_name, method in inspect.getmembers(layout, inspect.ismethod):
        if method_name.startswith("_") or method_name == "projected_template":
            continue
        path = method(*[name] * len(inspect.signature(method).parameters))
        assert path.resolve().is_relative_to(root), (method_name, path)
        assert path.resolve() != root
    key = segment(name)
    assert "/" not in key and "\x00" not in key and key not in (".", "..")
    assert not key.startswith(".") and 0 < len(key.encode()) <= 255


def _damage_manifest(text: str):
    return lambda folder: (folder / "manifest.json").write_text(text)


def _edit_manifest(**change):
    def edit(folder: Path) -> None:
        data = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({**data, **change}))
    return edit


def _drop_key(key: str):
    def edit(folder: Path) -> None:
        data = json.loads((folder / "manifest.json").read_text())
        (folder / "manifest.json").write_text(json.dumps({k: v for k, v in data.items()
                                                          if k != key}))
    return edit


def _flip_a_byte(folder: Path) -> None:
    path = folder / "prompt.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": (lambda folder: (folder / "manifest.json").write_text(
        (folder / "manifest.json").read_text()[:40]), "not valid JSON"),
    "empty": (_damage_manifest(""), "not valid JSON"),
    "not an object": (_damage_manifest("[1, 2]"), "a manifest is a JSON object, not an array"),
    "NaN score": (_edit_manifest(score=float("nan")), "NaN is not a JSON value"),
    "score of another type": (_edit_manifest(score="high"), "'score' must be a number"),
    "missing key": (_drop_key("model"), "missing required key 'model'"),
    "unknown key": (_edit_manifest(colour="red"), "unknown key 'colour'"),
    "binary garbage": (lambda folder: (folder / "manifest.json").write_bytes(b"\xff\xfe\x00"),
                       "not valid JSON"),
    "tensor file altered": (_flip_a_byte, "does not match the checksum"),
    "tensor file missing": (lambda folder: (folder / "prompt.safetensors").unlink(),
                            "prompt.safetensors is missing"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_record_is_named_and_the_others_still_serve(tmp_path, capsys, damage):
    """Listing names the damaged prompt on stderr and carries on; a command about that prompt
    stops with one clear error; `check` names the problem."""
    hurt, problem = DAMAGE[damage]
    store = Store(tmp_path)
    for i in range(3):
        prompt = torch.randn(2, 4)
        store.prompts.put(prompt, manifest(f"p{i}", prompt, created=float(i)))
    hurt(store.prompts.folder("p1"))
    listed = [m.id for m in Store(tmp_path).prompts.select("tiny-roberta")]
    manifest_damaged = damage not in ("tensor file altered", "tensor file missing")
    assert listed == (["p0", "p2"] if manifest_damaged else ["p0", "p1", "p2"])
    err = capsys.readouterr().err
    assert ("warning: prompt p1 is left out" in err) == manifest_damaged
    with pytest.raises(PtdistError, match=f"prompt p1 in store {tmp_path} is damaged: .*"
                                          f"{problem}.*Remove its folder"):
        store.prompts.tensor("p1")
    assert torch.equal(store.prompts.tensor("p2"), store.prompts.tensor("p2"))
    checked = {c.id: c.problem for c in store.prompts.check()}
    assert checked["p0"] is None and checked["p2"] is None and problem in checked["p1"]


def test_a_schema_2_manifest_reads_without_a_checksum(tmp_path):
    store = Store(tmp_path).prompts
    prompt = torch.randn(2, 4)
    folder = store.put(prompt, manifest("p1", prompt))
    data = json.loads((folder / "manifest.json").read_text())
    del data["file_sha256"]
    (folder / "manifest.json").write_text(json.dumps(dict(data, schema_version=2)))
    assert store.manifest("p1").file_sha256 is None and torch.equal(store.tensor("p1"), prompt)
    [checked] = store.check()
    assert checked.problem is None and "no checksum recorded" in checked.note


def test_a_manifest_that_is_not_strict_json_is_never_written(tmp_path):
    store = Store(tmp_path).prompts
    prompt = torch.randn(2, 4)
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        store.put(prompt, manifest("p1", prompt, score=float("nan")))
    assert not store.folder("p1").exists()
