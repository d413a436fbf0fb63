"""The GPU check (benchmarks/gpu_check.py) in its CPU smoke mode: the same code paths as on a
GPU (random T5 v1.1 weights from a config, the DeepSpeed engine at ZeRO-0, with activation
checkpointing and at ZeRO-3, capture and matrix evaluation in bf16), on the tiny preset's
shapes, so the script a user runs on a GPU is known to work up to the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import child_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_in_smoke_mode_and_writes_its_json_and_table(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke",
                           "--out", str(out)], cwd=tmp_path, env=child_env(), text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu"
    cases = {c["case"]: c for c in result["train"]}
    assert set(cases) == {"zero0", "zero0+ckpt", "zero3"}
    for case in cases.values():
        assert case["model"] == "tiny-t5-v1_1" and case["tokens_per_s"] > 0
        assert case["planned_gb"] > 0 and case["mfu"] is None  # no card peak on CPU
    assert {t["what"] for t in result["inference"]} == {"capture", "matrix eval"}
    assert all(t["per_s"] > 0 for t in result["inference"])
    assert "tokens/s" in proc.stdout and "zero0+ckpt" in proc.stdout
