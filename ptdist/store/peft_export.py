"""Export a stored prompt as a PEFT prompt-tuning adapter that `peft` loads.

ptdist places the prompt in front of every token of the encoder input, as PEFT does, and only
there: `num_transformer_submodules` is 1 (PEFT's seq2seq default of 2 would also prepend a
prompt to the decoder). MLM backbones use PEFT's FEATURE_EXTRACTION task type, whose forward
prepends the prompt and returns the wrapped model's output (the MLM logits) unchanged.
"""

from __future__ import annotations

from pathlib import Path

from safetensors.torch import save_file

from ptdist.files import require_writable_folder
from ptdist.store.atomic import atomic_write, atomic_write_json
from ptdist.store.prompts import PEFT_KEY, PromptStore

_TASK_TYPE = {"mlm": "FEATURE_EXTRACTION", "seq2seq": "SEQ_2_SEQ_LM"}


def export_peft(prompts: PromptStore, prompt_id: str, out_dir: str | Path,
                base_model: str | None = None) -> Path:
    """Write the stored prompt ``prompt_id`` as a PEFT adapter folder ``out_dir`` (a new one,
    or an existing folder whose adapter files it replaces)."""
    out = Path(out_dir)
    require_writable_folder(out, "adapter folder", "export-peft writes an adapter folder: "
                            "give the path of a new folder (or of an adapter folder to replace)")
    manifest = prompts.manifest(prompt_id)
    prompt = prompts.tensor(prompt_id)
    length, width = prompt.shape
    config = {
        "peft_type": "PROMPT_TUNING",
        "task_type": _TASK_TYPE[manifest.backbone_kind],
        "base_model_name_or_path": base_model or manifest.model,
        "num_virtual_tokens": length,
        "token_dim": width,
        "num_transformer_submodules": 1,
        "prompt_tuning_init": "RANDOM",
        "inference_mode": True,
        "revision": None,
    }
    atomic_write(out / "adapter_model.safetensors",
                 lambda tmp: save_file({PEFT_KEY: prompt.contiguous()}, tmp))
    atomic_write_json(out / "adapter_config.json", config)
    atomic_write_json(out / "ptdist_manifest.json", manifest.to_json())
    return out
