"""Activated neurons: Parquet capture equals forward hooks, indicators on a hand example,
bounded memory while capturing, a capture killed mid-commit repaired by running it again, and
the correlation table on tiny presets."""

from __future__ import annotations

import json
import math
import shutil
import signal
import subprocess
import sys
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ptdist.backbones import load_backbone
from ptdist.errors import PtdistError
from ptdist.neurons.capture import ffn_sites
from ptdist.neurons.collect import CaptureSettings, capture
from ptdist.neurons.correlation import correlate
from ptdist.neurons.indicators import embedding_indicators, neuron_indicators
from ptdist.neurons.pairs import pairwise_indicators
from ptdist.store import Store
from ptdist.store.activations import ActivationWriter, activation_dataset, captured
from ptdist.store.results import IndicatorRow, MatrixRow
from ptdist.statistics import spearman
from ptdist.store.tables import read_records
from ptdist.transfer import MatrixSettings, transfer_matrix
from tests.conftest import child_env
from tests.test_store import manifest


def _store_with_prompts(root, model: str, n: int, seed: int = 0) -> Store:
    store = Store(root)
    width = load_backbone(model).hidden_size
    generator = torch.Generator().manual_seed(seed)
    for i in range(n):
        prompt = torch.randn(4, width, generator=generator)
        store.prompts.put(prompt, manifest(f"{model}-{i:04d}", prompt, model=model, created=i))
    return store


def _reference(backbone, prompt: torch.Tensor) -> np.ndarray:
    """FFN activations [layers, d_ff] from hooks placed here, on the paper's bare input: an
    MLM's encoder layers at the mask, T5's decoder layers at the first decoding step."""
    model, tok, length = backbone.model, backbone.tokenizer, prompt.shape[0]
    if backbone.kind == "mlm":
        modules = [layer.intermediate for layer in model.roberta.encoder.layer]
        ids = [tok.mask_token_id, tok.sep_token_id]
    else:
        modules = [block.layer[-1].DenseReluDense.act for block in model.decoder.block]
        ids = [tok.convert_tokens_to_ids("<extra_id_0>"), tok.eos_token_id]
    seen = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: seen.append(out)) for m in modules]
    embeds = torch.cat([prompt[None], model.get_input_embeddings()(torch.tensor([ids]))], dim=1)
    with torch.no_grad():
        if backbone.kind == "mlm":
            model(inputs_embeds=embeds)
        else:
            start = torch.tensor([[model.config.decoder_start_token_id]])
            model(inputs_embeds=embeds, decoder_input_ids=start)
    for hook in hooks:
        hook.remove()
    position = length if backbone.kind == "mlm" else 0
    return torch.stack([out[0, position] for out in seen]).numpy()


@pytest.mark.parametrize("model", ["tiny-roberta", "tiny-t5-v1_1"])
def test_parquet_activations_equal_forward_hooks_read_with_pyarrow_alone(tmp_path, model):
    store = _store_with_prompts(tmp_path, model, 3)
    result = capture(store, store.prompts.select(model), CaptureSettings())
    assert result.captured == 3
    backbone = load_backbone(model)
    layers = len(ffn_sites(backbone))
    table = pq.read_table(store.layout.activations(model)).to_pylist()  # pyarrow only
    assert len(table) == 3 * layers
    for pid in ("0000", "0001", "0002"):
        prompt = store.prompts.tensor(f"{model}-{pid}")
        expected = _reference(backbone, prompt)
        rows = sorted((r for r in table if r["prompt_id"] == f"{model}-{pid}"),
                      key=lambda r: int(r["layer"]))
        got = np.stack([r["values"] for r in rows])
        np.testing.assert_allclose(got, expected, atol=1e-5)
        bits = np.stack([np.unpackbits(np.array(r["states"], dtype=np.uint8)) for r in rows])
        assert (bits[:, :got.shape[1]].astype(bool) == (got > 0)).all()
        assert [r["n_active"] for r in rows] == list((got > 0).sum(1))
    assert capture(store, store.prompts.select(model), CaptureSettings()).captured == 0


def test_ray_data_reads_the_same_activations(tmp_path):
    import ray

    store = _store_with_prompts(tmp_path, "tiny-roberta", 2)
    capture(store, store.prompts.select("tiny-roberta"), CaptureSettings())
    folder = store.layout.activations("tiny-roberta")
    by_pyarrow = {(r["prompt_id"], int(r["layer"])): r["values"]
                  for r in pq.read_table(folder).to_pylist()}
    ray.init(address="local", num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        rows = ray.data.read_parquet(str(folder)).take_all()  # Hive partitions by default
    finally:
        ray.shutdown()
    assert len(rows) == len(by_pyarrow)
    for row in rows:
        np.testing.assert_array_equal(row["values"], by_pyarrow[(row["prompt_id"],
                                                                 int(row["layer"]))])


def test_indicators_match_a_hand_computed_example():
    p1 = np.array([[1.0, 0.0], [0.0, 1.0]])
    p2 = np.array([[1.0, 0.0], [1.0, 0.0]])
    e = embedding_indicators(p1, p2)
    assert e["E_concat"] == pytest.approx(0.5)
    assert e["E_avg"] == pytest.approx(0.5)  # token-pair cosines 1, 1, 0, 0
    assert e["E_tokmean"] == pytest.approx(1 / math.sqrt(2))
    assert e["D_concat"] == pytest.approx(1 / (1 + math.sqrt(2)))
    # token-pair distances 0, 0, sqrt(2), sqrt(2): D_avg = 1 / (1 + their mean), as the
    # reference computes it (not the mean of 1 / (1 + d), which is 0.707)
    assert e["D_avg"] == pytest.approx(1 / (1 + math.sqrt(2) / 2))
    assert e["D_tokmean"] == pytest.approx(1 / (1 + math.sqrt(0.5)))
    s1 = np.array([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 1]], dtype=bool)
    s2 = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]], dtype=bool)
    on = neuron_indicators(s1, s2)
    assert on["ON"] == pytest.approx(4 / 5)  # 4 shared active neurons, 5 active in each
    assert on["ON_layer_0"] == pytest.approx(1 / math.sqrt(2))
    assert on["ON_layer_1"] == pytest.approx(1.0)
    assert on["ON_layers_0-2"] == pytest.approx(on["ON"])
    same = neuron_indicators(s1, s1)
    assert same["ON"] == pytest.approx(1.0)
    assert embedding_indicators(p1, p1)["E_concat"] == pytest.approx(1.0)


def test_spearman_handles_ties_and_equals_scipys():
    from scipy.stats import spearmanr

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks x = 1, 2.5, 2.5, 4; y = 1, 3, 2, 4: Pearson of the ranks
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486832980505138)
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, y = rng.integers(0, 5, 12), rng.normal(size=12)  # with ties in x
        assert spearman(list(x), list(y)) == pytest.approx(spearmanr(x, y).statistic)


def test_capture_memory_stays_flat_as_prompts_grow(tmp_path):
    few, many = 40, 800
    store = _store_with_prompts(tmp_path, "tiny-roberta", few + many)
    manifests = store.prompts.manifests()
    settings = CaptureSettings(batch_size=8, flush_rows=16)
    capture(store, manifests[:4], settings)  # warm caches (tokenizer, preset) outside the measure

    def peak(chunk: list) -> int:
        tracemalloc.start()
        try:
            capture(store, chunk, settings)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    small = peak(manifests[4:4 + few])
    large = peak(manifests[4 + few:4 + few + many])
    # Holding the extra prompts' rows would cost at least their values: 2 layers x 128 floats
    # x 4 B each (~780 KB). Measured: the peaks differ by well under half that (GC timing).
    accumulated = (many - few) * 2 * 128 * 4
    assert large - small < accumulated / 2, (small, large)


def test_the_correlation_table_equals_scipy_on_the_matrix_and_indicators(task_prompts):
    from scipy.stats import spearmanr

    root, data, _ = task_prompts
    store = Store(root / "store")
    with pytest.raises(PtdistError, match="run `ptdist transfer matrix --model tiny-t5` first"):
        correlate(store, "tiny-t5")
    prompts = store.prompts.select("tiny-roberta")
    transfer_matrix(store, prompts, MatrixSettings(data_dir=str(data)))
    capture(store, prompts, CaptureSettings())
    indicators = pairwise_indicators(store, "tiny-roberta", prompts)
    on_self = [r.value for r in indicators.rows
               if r.indicator == "ON" and r.prompt_a == r.prompt_b]
    assert len(on_self) == 4 and all(v == pytest.approx(1.0) for v in on_self)
    result = correlate(store, "tiny-roberta")
    # The same numbers from the stored tables with scipy: per target over its 3 other
    # sources, averaged; and globally over the 12 (source, target) pairs.
    matrix = read_records(store.layout.matrix("tiny-roberta"), MatrixRow)
    value = {(r.indicator, r.prompt_a, r.prompt_b): r.value
             for r in read_records(store.layout.indicators("tiny-roberta"), IndicatorRow)}
    own = {r.target_task: r.source_prompt for r in matrix if r.source_task == r.target_task}
    off = [r for r in matrix if r.source_task != r.target_task]
    for row in result.rows:
        x = [value[(row.indicator, r.source_prompt, own[r.target_task])] for r in off]
        y = [r.relative for r in off]
        expected = spearmanr(x, y).statistic
        assert row.pairs == 12 and row.spearman_global == pytest.approx(expected, nan_ok=True)
        per_target = [spearmanr([x[i] for i, r in enumerate(off) if r.target_task == t],
                                [y[i] for i, r in enumerate(off) if r.target_task == t])
                      .statistic for t in own]
        defined = [rho for rho in per_target if np.isfinite(rho)]
        assert row.targets == len(defined)
        assert row.spearman_per_target == (pytest.approx(np.mean(defined)) if defined else None)
    assert {r.indicator for r in result.rows} >= {"ON", "ON_layer_0", "ON_layer_1",
                                                  "E_concat", "E_avg", "D_avg"}
    assert len(read_records(result.table, type(result.rows[0]))) == len(result.rows)


def test_the_data_protocol_averages_activations_over_examples(task_prompts, tmp_path):
    from ptdist.neurons.capture import ffn_activations
    from ptdist.tasks import get_task, load_split

    root, data, ids = task_prompts
    store = Store(root / "store")
    capture(store, store.prompts.select("tiny-roberta", ["sst2"]),
            CaptureSettings(protocol="data", examples=5, batch_size=2, data_dir=str(data)))
    rows = [r for r in pq.read_table(store.layout.activations("tiny-roberta")).to_pylist()
            if r["protocol"] == "data"]
    assert {r["prompt_id"] for r in rows} == {ids["sst2"]} and {r["examples"] for r in rows} == {5}
    backbone = load_backbone("tiny-roberta")
    task = get_task("sst2")
    examples = load_split(task, "eval", limit=5, data_dir=str(data)).to_list()
    prompt = store.prompts.tensor(ids["sst2"])
    one_by_one = torch.stack([ffn_activations(backbone, prompt[None], backbone.collate(
        [row], task.words_for(backbone.kind)))[0] for row in examples]).mean(0).numpy()
    got = np.stack([r["values"] for r in sorted(rows, key=lambda r: int(r["layer"]))])
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)


@pytest.mark.slow
def test_the_neurons_commands_capture_on_ray_then_correlate(task_prompts, tmp_path):
    root, data, _ = task_prompts
    shutil.copytree(root / "store" / "prompts", tmp_path / "store" / "prompts")
    env = child_env()

    def ptdist(*args: str) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "ptdist", *args, "--store",
                               str(tmp_path / "store")], cwd=tmp_path, env=env, text=True,
                              capture_output=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    tasks = ["sst2", "imdb", str(data / "topic.yaml"), str(data / "topic2.yaml")]
    ptdist("transfer", "matrix", "--model", "tiny-roberta", "--tasks", *tasks,
           "--data-dir", str(data), "--local")
    captured = ptdist("neurons", "capture", "--model", "tiny-roberta", "--chunks", "2")
    assert "captured 4 prompt(s) (0 already stored)" in captured.stdout
    assert "done capture tiny-roberta [2/2]" in captured.stderr and "local Ray" in captured.stderr
    ptdist("neurons", "indicators", "--model", "tiny-roberta")
    table = ptdist("neurons", "correlate", "--model", "tiny-roberta").stdout
    assert "ON_layer_1" in table and "E_concat" in table and "layer-wise ON curve" in table


def _indicator_values(store: Store) -> dict:
    result = pairwise_indicators(store, "tiny-roberta", store.prompts.select("tiny-roberta"))
    return {(r.prompt_a, r.prompt_b, r.indicator): r.value for r in result.rows}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, dict]:
    """Three prompts captured without a fault, and their indicators."""
    root = tmp_path_factory.mktemp("uninterrupted")
    store = _store_with_prompts(root, "tiny-roberta", 3)
    capture(store, store.prompts.select("tiny-roberta"), CaptureSettings())
    return root, _indicator_values(store)


def _files(folder: Path) -> tuple[list[str], list[str], list[str]]:
    """(hidden part files, visible part files, commit records) under an activation folder."""
    parts = [p.name for p in folder.glob("task=*/layer=*/*")]
    return ([n for n in parts if n.startswith(".")], [n for n in parts if not n.startswith(".")],
            [p.name for p in (folder / "_commits").glob("*.json")])


@pytest.mark.parametrize("site,hidden,visible", [("part 1", 2, 0), ("part 2", 1, 1),
                                                ("commit", 0, 2)],
                         ids=["before the first rename", "between renames",
                              "after the last rename"])
def test_a_capture_killed_mid_commit_is_repaired_by_running_it_again(tmp_path, uninterrupted,
                                                                     capsys, site, hidden,
                                                                     visible):
    """`ptdist neurons capture` SIGKILLed by the fault hook (PTDIST_FAULTS) at a point of its
    commit: nothing of it is listed, and the same command run again captures every prompt
    into one clean commit whose indicators equal an uninterrupted capture's."""
    from tests.test_cli import run

    reference_root, reference = uninterrupted
    shutil.copytree(reference_root / "prompts", tmp_path / "prompts")
    store = Store(tmp_path)
    folder = store.layout.activations("tiny-roberta")
    command = ["neurons", "capture", "--model", "tiny-roberta", "--chunks", "1", "--local",
               "--store", str(tmp_path)]
    rule = {"match": f"activations tiny-roberta {site}", "fault": "kill", "times": 1,
            "log": str(tmp_path / "faults.log")}
    killed = subprocess.run([sys.executable, "-m", "ptdist", *command], text=True,
                            env=child_env(PTDIST_FAULTS=json.dumps(rule)), capture_output=True,
                            timeout=600)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    found = _files(folder)
    assert (len(found[0]), len(found[1]), found[2]) == (hidden, visible, []), found
    assert captured(store.layout, "tiny-roberta", "prompt") == set()  # nothing half-visible
    assert activation_dataset(store.layout, "tiny-roberta") is None
    assert run(capsys, "prompts", "--check", "--store", str(tmp_path))[0] == 0

    code, out, err = run(capsys, *command)
    assert code == 0 and "captured 3 prompt(s) (0 already stored)" in out, err
    hidden_after, visible_after, commits = _files(folder)
    assert hidden_after == [] and len(visible_after) == 2 and len(commits) == 1
    assert not list((folder / "_writers").glob("*"))
    assert len(pq.read_table(folder)) == 3 * 2  # any Parquet reader sees one clean capture
    assert _indicator_values(store) == reference


def test_a_live_capture_is_never_cleaned_by_another(tmp_path):
    """Two captures of one model at once (capture --chunks): the second's clean-up leaves the
    first one's uncommitted files alone, and both end up captured."""
    store = _store_with_prompts(tmp_path, "tiny-roberta", 3)
    first, *others = store.prompts.select("tiny-roberta")
    writer = ActivationWriter(store.layout, "tiny-roberta", 128, flush_rows=1)
    writer.add(first.id, first.task, "prompt", 0, np.ones((2, 128)), ["encoder.0", "encoder.1"])
    assert len(_files(store.layout.activations("tiny-roberta"))[0]) == 2
    capture(store, others, CaptureSettings())
    writer.close()
    assert captured(store.layout, "tiny-roberta", "prompt") == {m.id for m in [first, *others]}
    assert len(pq.read_table(store.layout.activations("tiny-roberta"))) == 3 * 2


def test_activations_of_the_layout_before_commits_are_read_and_repaired(tmp_path, uninterrupted):
    """A store captured before commit records (part-<uuid>.parquet, no _commits) reads as it
    is; one broken by a capture killed between renames (a layer missing, a temp part left) is
    repaired by capturing again."""
    reference_root, reference = uninterrupted
    shutil.copytree(reference_root, tmp_path / "store")
    store = Store(tmp_path / "store")
    folder = store.layout.activations("tiny-roberta")
    shutil.rmtree(folder / "_commits")
    for part in folder.glob("task=*/layer=*/part-*.parquet"):
        part.rename(part.with_name(f"part-{uuid.uuid4().hex}.parquet"))
    assert _indicator_values(store) == reference
    next(folder.glob("task=*/layer=1/part-*.parquet")).rename(
        folder / "task=sst2" / "layer=1" / f".part-{uuid.uuid4().hex}.parquet.tmp")
    assert captured(store.layout, "tiny-roberta", "prompt") == set()
    again = capture(store, store.prompts.select("tiny-roberta"), CaptureSettings())
    assert again.captured == 3 and _files(folder)[0] == []
    assert _indicator_values(store) == reference


def test_a_committed_capture_that_lost_a_part_file_is_captured_again(tmp_path, uninterrupted,
                                                                     capsys):
    reference_root, reference = uninterrupted
    shutil.copytree(reference_root, tmp_path / "store")
    store = Store(tmp_path / "store")
    folder = store.layout.activations("tiny-roberta")
    next(folder.glob("task=*/layer=0/part-*.parquet")).unlink()
    assert captured(store.layout, "tiny-roberta", "prompt") == set()
    assert "misses 1 part file(s)" in capsys.readouterr().err
    assert capture(store, store.prompts.select("tiny-roberta"), CaptureSettings()).captured == 3
    assert _indicator_values(store) == reference
    assert len(pq.read_table(folder)) == 3 * 2  # the broken commit's other part went too
def test_on_of_t5_reads_the_decoder_at_the_first_step_only(tmp_path):
    from ptdist.store.activations import ActivationWriter, read_states

    backbone = load_backbone("tiny-t5")
    decoder_layers = backbone.model.config.num_decoder_layers
    assert [s.name for s in ffn_sites(backbone)] == [f"decoder.{k}"
                                                      for k in range(decoder_layers)]
    # A capture written when T5's encoder layers (averaged over positions) were read too:
    # its states are the decoder rows alone, which are the same as a capture made now.
    store = Store(tmp_path)
    d_ff = backbone.model.config.d_ff
    rng = np.random.default_rng(0)
    encoder, decoder = rng.normal(size=(2, d_ff)), rng.normal(size=(decoder_layers, d_ff))
    with ActivationWriter(store.layout, "tiny-t5", d_ff) as writer:
        writer.add("old", "sst2", "prompt", 0, np.concatenate([encoder, decoder]),
                   ["encoder.0", "encoder.1"] + [f"decoder.{k}" for k in range(decoder_layers)])
    task, states = read_states(store.layout, "tiny-t5", "prompt")["old"]
    assert task == "sst2" and (states == (decoder > 0)).all()


def test_the_per_target_spearman_drives_the_ranking_not_the_global_one():
    from ptdist.neurons.correlation import Transfer, rank_indicators

    # Two targets with three sources each. Indicator "within" orders every target's sources
    # exactly as their transfer (per target +1) but puts the better-transferring target's
    # sources lower (global -0.77); "across" does the opposite (per target -1, global +0.77).
    relative = {"s1": 10, "s2": 20, "s3": 30, "s4": 70, "s5": 80, "s6": 90}
    target = {s: "t1" if s in ("s1", "s2", "s3") else "t2" for s in relative}
    own = {"t1": "o1", "t2": "o2"}
    within = dict(zip(relative, [0.7, 0.8, 0.9, 0.1, 0.2, 0.3]))
    across = dict(zip(relative, [0.3, 0.2, 0.1, 0.9, 0.8, 0.7]))
    pairs = [Transfer(s, f"task_{s}", target[s], r) for s, r in relative.items()]
    values = {name: {**{(s, own[target[s]]): v for s, v in table.items()},
                     **{(o, o): 1.0 for o in own.values()}}
              for name, table in (("across", across), ("within", within))}
    rows = rank_indicators("m", pairs, {t: [(o, None)] for t, o in own.items()}, values)
    assert [r.indicator for r in rows] == ["within", "across"]
    first, second = rows
    assert first.spearman_per_target == pytest.approx(1.0) and first.targets == 2
    assert second.spearman_per_target == pytest.approx(-1.0)
    assert second.spearman_global > first.spearman_global
    assert second.spearman_global == pytest.approx(spearman(list(across.values()),
                                                            list(relative.values())))
    # Prompts of unknown seeds are one replicate: no interval over seeds.
    assert first.seeds == 1 and first.per_target_low is None and first.global_low is None


def test_a_source_prompt_is_compared_with_the_targets_prompts_of_other_seeds():
    """Prompts of one seed start from the same random prompt whatever their task: a source
    is compared with the target's own prompts of the other seeds, so a value that only the
    shared start makes high does not reach the correlation."""
    from ptdist.neurons.correlation import Transfer, rank_indicators

    relative = {"a0": 10, "a1": 20, "b0": 30, "b1": 40, "c0": 50, "c1": 60}
    pairs = [Transfer(s, f"task_{s[0]}", "t", r, int(s[1])) for s, r in relative.items()]
    owns = {"t": [("t0", 0), ("t1", 1)]}
    # Across seeds the indicator follows transfer; within a seed it runs against it, and
    # strongly enough to reverse every mean over both own prompts.
    across = {"a": 0.1, "b": 0.2, "c": 0.3}
    within = {"a": 0.9, "b": 0.6, "c": 0.3}
    table = {}
    for s in relative:
        for own, seed in owns["t"]:
            table[(s, own)] = within[s[0]] if int(s[1]) == seed else across[s[0]]
    table.update({(o, o): 1.0 for o, _ in owns["t"]})
    [row] = rank_indicators("m", pairs, owns, {"E_concat": table})
    # Each seed is a replicate: within each, a, b and c rank as their transfer does.
    assert row.spearman_per_target == pytest.approx(1.0) and row.seeds == 2
    # Without seeds every own prompt counts: the shared starts reverse the sign.
    unknown = [Transfer(t.source, t.source_task, t.target_task, t.relative) for t in pairs]
    [row] = rank_indicators("m", unknown, owns, {"E_concat": table})
    assert row.spearman_per_target < 0


def _seed_study(seeds: int, noise: float):
    """Six tasks, ``seeds`` seeds, one prompt each: transfer from task a to any target grows
    with a (plus noise of the pair); indicator "good" follows it within each seed, "random"
    does not."""
    from ptdist.neurons.correlation import Transfer

    rng = np.random.default_rng(0)
    tasks = [f"t{k}" for k in range(6)]
    prompts = {(t, s): f"{t}_s{s}" for t in tasks for s in range(seeds)}
    pairs = [Transfer(prompts[a, s], a, t, 10.0 * int(a[1]) + noise * rng.normal(), s)
             for a in tasks for t in tasks for s in range(seeds) if a != t]
    owns = {t: [(prompts[t, s], s) for s in range(seeds)] for t in tasks}
    values = {"good": {}, "random": {}}
    for (a, s), p in prompts.items():
        for (t, u), o in prompts.items():
            values["good"][p, o] = int(a[1]) + rng.normal() + (5.0 if s == u else 0.0)
            values["random"][p, o] = rng.normal()
    return pairs, owns, values


def test_correlations_have_intervals_only_where_they_cover():
    """Six tasks of five sources per target, three seeds: compared within each seed, the seeds
    are independent replicates and the intervals are given; compared across seeds, they share
    the target's prompts and no interval is."""
    from ptdist.neurons.correlation import paired_per_target, rank_indicators, seed_coefficients
    from ptdist.statistics import verdict

    pairs, owns, values = _seed_study(3, 5.0)
    rows = {r.indicator: r for r in rank_indicators("m", pairs, owns, values, within_seed=True)}
    good = rows["good"]
    assert (good.seeds, good.targets, good.sources, good.pairs) == (3, 6, 5, 30)
    assert good.per_target_low < good.spearman_per_target < good.per_target_high
    assert good.global_low < good.spearman_global < good.global_high
    found = seed_coefficients(pairs, owns, values, within_seed=True)
    difference = paired_per_target(found["good"], found["random"])
    assert verdict(difference) == "higher" and difference.n == 3 and difference.p < 0.05
    across = rank_indicators("m", pairs, owns, values, within_seed=False)
    assert all(r.per_target_low is None and r.global_low is None for r in across)
    # Five tasks: four sources per target is too few for a per-target interval, while 20
    # pairs per seed still give the global one.
    five = [t for t in pairs if "t5" not in (t.source_task, t.target_task)]
    [row] = [r for r in rank_indicators("m", five, owns, values, within_seed=True)
             if r.indicator == "good"]
    assert (row.targets, row.sources, row.pairs) == (5, 4, 20)
    assert row.per_target_low is None and row.global_low is not None


def test_a_correlation_table_of_schema_2_is_read_without_its_bootstrap_intervals(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ptdist.store.results import CorrelationRow

    old = {"model": "m", "indicator": "ON", "spearman_per_target": 0.5, "per_target_low": 0.1,
           "per_target_high": 0.9, "targets": 3, "spearman_global": 0.4, "global_low": 0.0,
           "global_high": 0.8, "pairs": 12, "left_out": ""}
    path = tmp_path / "correlation.parquet"
    pq.write_table(pa.Table.from_pylist([old]).replace_schema_metadata(
        {b"ptdist.record": b"CorrelationRow", b"ptdist.schema_version": b"2"}), path)
    [row] = read_records(path, CorrelationRow)
    assert row.spearman_per_target == 0.5 and row.targets == 3 and row.seeds is None
    assert row.per_target_low is None and row.global_high is None


def test_embedding_indicators_of_prompts_alone_from_the_store_and_from_peft_adapters(
        task_prompts, tmp_path, capsys):
    """No activations: the store's prompts with its matrix, and the same prompts exported as
    PEFT adapters with the matrix as a CSV of scores, give the embedding indicators and the
    same correlations as the activation-based stage does for those indicators."""
    import csv
    import shutil

    from ptdist.store.peft_export import export_peft
    from ptdist.store.results import CorrelationRow
    from tests.test_cli import run

    root, data, ids = task_prompts
    store = Store(tmp_path / "store")
    shutil.copytree(root / "store" / "prompts", store.layout.prompts_dir())
    prompts = store.prompts.select("tiny-roberta")
    transfer_matrix(store, prompts, MatrixSettings(data_dir=str(data)))
    capture(store, prompts, CaptureSettings())
    pairwise_indicators(store, "tiny-roberta", prompts)
    with_activations = {r.indicator: r for r in correlate(store, "tiny-roberta").rows}

    code, out, err = run(capsys, "neurons", "embedding", "--model", "tiny-roberta", "--store",
                         str(store.root))
    assert code == 0, err
    from_store = {r.indicator: r for r in read_records(
        store.layout.embedding_correlation("tiny-roberta"), CorrelationRow)}
    assert set(from_store) == {"E_concat", "E_avg", "E_tokmean", "D_concat", "D_avg",
                               "D_tokmean"}
    for name, row in from_store.items():
        assert row == with_activations[name], name
    assert "per target [95% CI]" in out and "E_concat" in out

    adapters = tmp_path / "adapters"
    for task, pid in ids.items():
        export_peft(store.prompts, pid, adapters / task)
    with open(tmp_path / "matrix.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["source", "target", "score"])
        writer.writerows((r.source_task, r.target_task, r.score)
                         for r in read_records(store.layout.matrix("tiny-roberta"), MatrixRow))
    code, out, err = run(capsys, "neurons", "embedding", "--prompts", str(adapters),
                         "--matrix", str(tmp_path / "matrix.csv"), "--out",
                         str(tmp_path / "out"), "--json")
    assert code == 0, err
    from_files = {r.indicator: r for r in read_records(
        tmp_path / "out" / "embedding_correlation.parquet", CorrelationRow)}
    for name, row in from_files.items():
        assert row.spearman_global == pytest.approx(from_store[name].spearman_global), name
        assert row.spearman_per_target == pytest.approx(from_store[name].spearman_per_target)
    values = {(r.prompt_a, r.prompt_b, r.indicator): r.value for r in read_records(
        tmp_path / "out" / "embedding_indicators.parquet", IndicatorRow)}
    expected = embedding_indicators(store.prompts.tensor(ids["sst2"]).numpy(),
                                    store.prompts.tensor(ids["topic"]).numpy())
    for name, value in expected.items():
        assert values[("sst2", "topic", name)] == pytest.approx(value)

    code, _, err = run(capsys, "neurons", "embedding", "--prompts", str(adapters / "sst2"))
    assert code == 2 and "embedding indicators compare prompts pairwise; got 1" in err
