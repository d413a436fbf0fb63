"""cluster.yaml is a real Ray autoscaler config: it passes the schema check `ray up` runs, every
node runs the same pinned software (no node can install an unpinned ray), and it sets up the
job environment. Versions are compared file with file (cluster.yaml, the lock, pyproject.toml),
never with whatever happens to be installed here."""

from __future__ import annotations

import copy
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml
from jsonschema.exceptions import ValidationError
from ray.autoscaler._private.util import prepare_config, validate_config

from ptdist.orchestration.resources import node_types_from_cluster_config
from tests.conftest import locked_versions

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
COMMANDS = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands")


def _config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def _validate(config: dict) -> None:
    # `ray up` fills the provider's defaults before validating; do the same.
    validate_config(prepare_config(copy.deepcopy(config)))


def _local(path: str, config: dict) -> Path:
    """A path on a node, as the file of this checkout that `file_mounts` copies there."""
    for remote, local in config["file_mounts"].items():
        if path.startswith(remote):
            return (REPO / local / path[len(remote):].lstrip("/")).resolve()
    raise AssertionError(f"{path} is not under a file mount")


def _requirements(path: Path) -> list[str]:
    return [line.split("#")[0].strip() for line in path.read_text().splitlines()
            if line.split("#")[0].strip()]


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~; ]", requirement, maxsplit=1)[0].lower()


def unpinned_ray(config: dict) -> list[str]:
    """Every command that would install ray without an exact version: ray named without ==,
    or a package installed with its dependencies (ptdist asks for ray>=2.40) when nothing in
    the same install pins ray."""
    found = []
    for key in COMMANDS:
        for command in config.get(key) or []:
            for part in command.split("&&"):
                words = shlex.split(part)
                if "install" not in words or not any(w in ("pip", "pip3") or
                                                     w.endswith("/pip") for w in words):
                    continue
                args = words[words.index("install") + 1:]
                wanted, packages = [], []
                i = 0
                while i < len(args):
                    if args[i] in ("-r", "--requirement", "-c", "--constraint"):
                        wanted += _requirements(_local(args[i + 1], config))
                        i += 2
                    elif args[i] in ("-e", "--editable"):
                        packages.append(args[i + 1])
                        i += 2
                    elif args[i].startswith("-"):
                        i += 1
                    else:
                        (packages if "/" in args[i] else wanted).append(args[i])
                        i += 1
                pinned = any(_name(r) == "ray" and "==" in r for r in wanted)
                if any(_name(r) == "ray" and "==" not in r for r in wanted):
                    found.append(command)
                elif packages and "--no-deps" not in args and not pinned:
                    found.append(command)
    return found


def test_cluster_yaml_passes_rays_schema_validation():
    _validate(_config())


def test_the_schema_check_rejects_a_broken_copy():
    config = _config()
    config["available_node_types"]["gpu_1x"]["min_workers"] = "none"
    with pytest.raises(ValidationError):
        _validate(config)


def test_no_node_installs_an_unpinned_ray():
    config = _config()
    assert unpinned_ray(config) == []
    for bad in ("pip install -U ray", "pip install 'ray[default]>=2.40'",
                "pip install -q -e /home/ubuntu/ptdist"):  # ptdist's own deps: ray>=2.40
        broken = copy.deepcopy(config)
        broken["worker_setup_commands"] = [bad]
        assert unpinned_ray(broken) == [bad], bad


def test_every_node_runs_the_same_image_and_installs_through_the_lock_whose_ray_is_the_images():
    config = _config()
    docker = config["docker"]
    assert not {"head_image", "worker_image"} & set(docker)  # one image for every node
    image_ray = re.match(r"rayproject/ray:(\d+\.\d+\.\d+)-py311-(gpu|cu\d+)$", docker["image"])
    assert image_ray, docker["image"]
    assert locked_versions()["ray"] == image_ray.group(1)
    installs = [c for key in COMMANDS for c in config.get(key) or [] if "pip install" in c]
    assert installs and all("-c /home/ubuntu/ptdist/requirements/lock.txt" in c
                            for c in installs), installs
    # torch from PyPI on Linux is a CUDA build; every node checks it at setup.
    assert any("torch.version.cuda" in c for c in config["setup_commands"])
    assert docker["worker_run_options"] == ["--gpus all"]
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert images != {"latest_dlami"} and len(images) == 1


def test_the_lock_pins_every_dependency_pyproject_names():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    named = project["dependencies"] + [r for extra in project["optional-dependencies"].values()
                                       for r in extra]
    locked = locked_versions()
    assert {re.sub(r"[-_.]+", "-", _name(r)) for r in named} - set(locked) == set()
    assert locked["torch"] == "2.13.0"  # the CPU wheel the README installs first


def test_the_readme_and_ci_install_through_the_lock():
    readme = (REPO / "README.md").read_text()
    installs = [b for b in re.findall(r"```bash\n(.*?)\n```", readme, re.S)
                if b.startswith("python3 -m venv")]
    assert [("replicate" in b, "pytest" in b) for b in installs] == [(True, False),
                                                                      (False, True)]
    for command in installs:  # the main job's and the test suite's
        assert 'pip install -q -c requirements/lock.txt -e ".[' in command, command
    ci = (REPO / ".ci" / "run").read_text()
    assert installs[1] in ci  # CI runs exactly the README's test command


def test_the_job_environment_puts_caches_on_local_disk_and_the_store_on_the_share():
    options = " ".join(_config()["docker"]["run_options"])
    for var in ("HF_HOME", "HF_DATASETS_CACHE", "PTDIST_CACHE", "TORCH_EXTENSIONS_DIR"):
        assert re.search(rf"--env {var}=/mnt/local/", options), var
    assert "--env PTDIST_STORE=/mnt/ptdist/store" in options
    assert "-v /mnt/ptdist:/mnt/ptdist" in options and "-v /mnt/local:/mnt/local" in options


def test_worker_types_are_sized_for_t5_xxl_with_a_cpu_head():
    types = node_types_from_cluster_config(CLUSTER_YAML)
    config = _config()
    assert types[config["head_node_type"]].get("GPU", 0) == 0
    assert max(t.get("GPU", 0) for t in types.values()) == 8
    assert any(t.get("GPU") == 1 for t in types.values())
    assert types["gpu_8x"]["accelerator_type:A100"] == 1
    assert types["gpu_1x"]["accelerator_type:L40S"] == 1
    for name, node_type in config["available_node_types"].items():
        assert node_type["min_workers"] <= node_type["max_workers"], name
