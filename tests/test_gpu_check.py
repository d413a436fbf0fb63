"""The GPU check (benchmarks/gpu_check.py) in its CPU smoke mode: the same case runner as on a
GPU (each case in a process of its own, started by python, torchrun or a Ray Train worker group;
random T5 v1.1 weights from a config; the planner's placement; the DeepSpeed engine at ZeRO-0,
with activation checkpointing and at ZeRO-3; a pack at the planner's largest K; generation and
matrix evaluation), on the tiny preset's shapes, so the script a user runs on a GPU is known to
work up to the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ptdist.orchestration.planning.cost_model import example_flops
from tests.conftest import child_env

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_every_case_in_its_own_process_in_smoke_mode(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke",
                           "--out", str(out)], cwd=tmp_path, env=child_env(), text=True,
                          capture_output=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["smoke"] and result["card"] is None
    cases = {c["case"]: c for c in result["cases"]}
    assert set(cases) == {"xxl-train", "xxl-train-checkpointed", "pack", "xxl-generate",
                          "xxl-matrix", "xxl-zero3-torchrun", "xxl-zero3-ray"}
    assert len({c["pid"] for c in cases.values()}) == len(cases)  # a process each
    assert {c["launcher"] for c in cases.values()} == {"python", "torchrun", "ray"}
    assert cases["xxl-zero3-ray"]["zero_stage"] == cases["xxl-zero3-torchrun"]["zero_stage"] == 3
    assert cases["xxl-train-checkpointed"]["checkpointing"]
    assert cases["pack"]["pack"] > 1
    for case in cases.values():
        assert case["model"] == "tiny-t5-v1_1" and case["per_s"] > 0, case
        assert case["mfu"] is None and case["peak_gb"] is None  # no card, no CUDA peak on CPU
    for name in ("xxl-train", "xxl-train-checkpointed", "xxl-zero3-ray", "pack"):
        case = cases[name]
        assert case["planned_gb"] > 0
        # The MFU's numerator: the cost model's useful FLOPs of the step's examples (prompt 4 +
        # text 16 tokens; the label word and </s> as target; every run's of a pack), not the
        # recomputation.
        examples = case["micro_batch"] * case["accumulation"] * case["pack"]
        one = example_flops("tiny-t5-v1_1", "bf16", 4, 16, 2).useful()
        assert case["flops_per_step"] == pytest.approx(examples * one)
