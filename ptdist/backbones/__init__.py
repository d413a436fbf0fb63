"""Frozen backbones (encoder MLM, encoder-decoder) and the soft prompt. Each name loads its
module on first use (`ptdist.lazy`): the preset names are read without torch."""

from ptdist.lazy import lazy_face

__all__, __getattr__, __dir__ = lazy_face(__name__, {
    "base": ("Backbone", "Batch"),
    "loading": ("CONVERTED", "PRECISIONS", "dtype_of", "fit_mlm_head", "fitted_head_key",
                "load_backbone", "model_config", "model_kind", "random_model",
                "resolve_model_path"),
    "presets": ("PRESETS",),
    "prompt": ("SoftPrompt", "initial_prompt"),
    "prompt_init": ("InitMode", "PromptInit", "parse_init"),
})
