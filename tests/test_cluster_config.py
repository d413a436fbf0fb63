"""cluster.yaml is a real Ray autoscaler config: it passes the schema check `ray up` runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from ptdist.orchestration.resources import node_types_from_cluster_config

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def _validate(config: dict) -> None:
    # `ray up` fills the provider's defaults before validating; do the same.
    validate_config(prepare_config(copy.deepcopy(config)))


def test_cluster_yaml_passes_rays_schema_validation():
    _validate(yaml.safe_load(CLUSTER_YAML.read_text()))


def test_the_schema_check_rejects_a_broken_copy():
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    config["available_node_types"]["gpu_1x"]["min_workers"] = "none"
    with pytest.raises(ValidationError):
        _validate(config)


def test_worker_types_are_sized_for_t5_xxl_with_a_cpu_head():
    types = node_types_from_cluster_config(CLUSTER_YAML)
    config = yaml.safe_load(CLUSTER_YAML.read_text())
    assert types[config["head_node_type"]].get("GPU", 0) == 0
    assert max(t.get("GPU", 0) for t in types.values()) == 8
    assert any(t.get("GPU") == 1 for t in types.values())
    for name, node_type in config["available_node_types"].items():
        assert node_type["min_workers"] <= node_type["max_workers"], name
