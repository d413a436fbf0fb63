import json

import pytest
import torch
from peft import PeftModel

from ptdist.backbones import load_backbone
from ptdist.errors import PtdistError
from ptdist.store.peft_export import export_peft
from ptdist.store.prompts import PromptStore

ROWS = [{"text": "the movie was great", "label": 1}, {"text": "awful plot", "label": 0}]
WORDS = ["negative", "positive"]


def _put(store: PromptStore, prompt: torch.Tensor, kind: str, model: str) -> str:
    store.put("abc123", prompt, {"model": model, "task": "sst2", "backbone_kind": kind})
    return "abc123"


def test_put_and_load_round_trip_only_safetensors_and_json(tmp_path):
    store = PromptStore(tmp_path)
    prompt = torch.randn(4, 8)
    folder = store.put("p1", prompt, {"model": "m", "task": "t", "score": 1.0, "created": 1})
    loaded, manifest = store.load("p1")
    assert torch.equal(loaded, prompt)
    assert manifest["shape"] == [4, 8] and manifest["id"] == "p1"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "prompt.safetensors"]
    assert store.load(str(folder))[0].equal(prompt)
    assert store.load(str(folder / "prompt.safetensors"))[0].equal(prompt)
    assert [m["id"] for m in store.manifests()] == ["p1"]


def test_unknown_prompt_and_foreign_file_are_clear_errors(tmp_path):
    store = PromptStore(tmp_path)
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
    store = PromptStore(tmp_path / "store")
    prompt = torch.randn(6, backbone.hidden_size) * 0.5
    pid = _put(store, prompt, backbone.kind, model)
    out = export_peft(store, pid, tmp_path / "adapter")
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
    assert torch.equal(store.load(str(out))[0], prompt)
