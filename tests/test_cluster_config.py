"""cluster.yaml as ptdist reads it and as its nodes run: ptdist takes the node types, their
counts and each type's GPU from it (a config without node types is refused), places runs only
on types that hold them, and plans the paper's T5-XXL on the smallest card it may land on
(the memory planner, not a count); every node runs the same pinned software (one image, built
by the Dockerfile from Ray's image through the lock; a pinned host AMI; no node can install an
unpinned ray), and GPU nodes may write Ray's records to S3. Versions are compared file with
file (cluster.yaml, the Dockerfile, the lock, pyproject.toml), never with whatever happens to be
installed here."""

from __future__ import annotations

import copy
import hashlib
import re
import shlex
from pathlib import Path

import pytest
import tomllib
import yaml
from ptdist.errors import PtdistError
from ptdist.orchestration.planning.plans import model_plans
from ptdist.orchestration.planning.resources import (Cluster, node_card,
                                                     node_types_from_cluster_config)
from ptdist.orchestration.spec.spec_presets import preset
from ptdist.orchestration.spec.study_spec import load_study
from ptdist.orchestration.spec.sweep_spec import Resources, parse_spec
from tests.conftest import LOCK, locked_versions

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
DOCKERFILE = REPO / "Dockerfile"
COMMANDS = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands")


def _config() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


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


def test_a_cluster_config_without_node_types_is_refused_naming_the_file(tmp_path):
    config = _config()
    config["available_node_types"] = {}
    broken = tmp_path / "cluster.yaml"
    broken.write_text(yaml.safe_dump(config))
    with pytest.raises(PtdistError, match=f"cluster config {broken} has no available_node_types"):
        Cluster.from_config(broken)


def test_no_node_installs_an_unpinned_ray():
    config = _config()
    assert unpinned_ray(config) == []
    for bad in ("pip install -U ray", "pip install 'ray[default]>=2.40'",
                "pip install -q -e /home/ubuntu/ptdist"):  # ptdist's own deps: ray>=2.40
        broken = copy.deepcopy(config)
        broken["worker_setup_commands"] = [bad]
        assert unpinned_ray(broken) == [bad], bad


def _dockerfile() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_every_node_runs_the_image_the_dockerfile_builds_from_rays_image_through_the_lock():
    config = _config()
    docker = config["docker"]
    assert not {"head_image", "worker_image"} & set(docker)  # one image for every node
    steps = _dockerfile()
    base = re.fullmatch(r"FROM rayproject/ray:(\d+\.\d+\.\d+)-py311-(gpu|cu\d+)", steps[0])
    assert base, steps[0]
    assert locked_versions()["ray"] == base.group(1)
    # The image holds the dependencies, installed through the lock the build copies in.
    copied = dict(reversed(step.split()[-2:]) for step in steps if step.startswith("COPY"))
    lock_copy = copied["/tmp/ptdist/requirements/lock.txt"]
    assert lock_copy == "requirements/lock.txt"
    installs = [step for step in steps if "pip install" in step]
    assert installs and all("-c /tmp/ptdist/requirements/lock.txt" in step
                            for step in installs), installs
    assert any("torch.version.cuda" in step for step in steps)  # a CUDA build, checked
    # cluster.yaml names that image: built from this Ray and this lock (a changed lock needs a
    # new image: its tag changes).
    lock_digest = hashlib.sha256(LOCK.read_bytes()).hexdigest()[:12]
    assert docker["image"].endswith(f"/ptdist:ray{base.group(1)}-lock{lock_digest}"), \
        docker["image"]
    # Each node installs ptdist itself through the same lock.
    node_installs = [c for key in COMMANDS for c in config.get(key) or [] if "pip install" in c]
    assert node_installs and all("-c /home/ubuntu/ptdist/requirements/lock.txt" in c
                                 for c in node_installs), node_installs
    assert any("torch.version.cuda" in c for c in config["setup_commands"])
    assert docker["worker_run_options"] == ["--gpus all"]


def test_the_host_ami_is_one_pinned_image_id_with_its_lookup_beside_it():
    config = _config()
    images = {t["node_config"]["ImageId"] for t in config["available_node_types"].values()}
    assert len(images) == 1
    assert re.fullmatch(r"ami-[0-9a-f]{8,17}", images.pop())
    header = CLUSTER_YAML.read_text().split("cluster_name:")[0]
    assert "aws ssm get-parameter" in header and "/ami-id" in header


def test_gpu_nodes_have_an_instance_profile_for_rays_s3_records():
    config = _config()
    for name, node_type in config["available_node_types"].items():
        if node_type.get("resources", {}).get("GPU"):
            assert node_type["node_config"]["IamInstanceProfile"]["Name"], name
    # The head gets Ray's own profile (ray up creates it) unless the config names one.
    head = config["available_node_types"][config["head_node_type"]]["node_config"]
    assert "IamInstanceProfile" not in head


def test_every_gpu_node_type_declares_a_gpu_memory_the_planner_reads():
    types = node_types_from_cluster_config(CLUSTER_YAML)
    cards = {name: node_card(offer) for name, offer in types.items() if offer.get("GPU")}
    assert cards and all(card is not None for card in cards.values())
    for name, card in cards.items():
        assert types[name][f"gpu_memory_gb:{card.memory_gb:g}"] == 1, name


def test_the_planner_says_the_papers_t5_xxl_fits_every_node_type_it_may_land_on(tmp_path):
    study = load_study(preset("paper"), storage_path=str(tmp_path))
    cluster = Cluster.from_config(CLUSTER_YAML)
    xxl = next(m for m in study.spec.models if m.name == "google/t5-v1_1-xxl")
    landing = cluster.holding(xxl.resources.group())
    assert {cluster.card_of(n).memory_gb for n in landing} == {48, 80}
    plan = next(p for p in model_plans(study.spec, cluster) if p.model == xxl.name)
    assert plan.card.memory_gb == 48  # planned on the smallest card it may land on
    assert plan.fits


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


def _runs(tmp_path, resources: dict) -> list:
    return parse_spec({"name": "s", "storage_path": str(tmp_path), "tasks": ["sst2"],
                       "models": {"tiny-t5": {"resources": resources}}}).runs()


def test_placement_keeps_gpu_runs_off_the_head_and_plans_each_on_the_card_it_lands_on(tmp_path):
    """What the placement decides from cluster.yaml: a CPU job may run on the head, a GPU run
    never does; a one-GPU run may land on either GPU type and is planned on the smaller card;
    a one-node group of eight GPUs only fits the eight-GPU type, and is planned on its card."""
    cluster = Cluster.from_config(CLUSTER_YAML)
    head = _config()["head_node_type"]
    assert head in cluster.holding({"CPU": 1})
    one = Resources(gpus=1)
    assert head not in cluster.holding(one.group()) and len(cluster.holding(one.group())) >= 2
    cards = {cluster.card_of(n).memory_gb for n in cluster.holding(one.group())}
    assert cluster.card_for(one).memory_gb == min(cards) < max(cards)
    node = Resources(gpus=8, workers=8)
    [eight] = cluster.holding(node.group())
    assert cluster.card_for(node) == cluster.card_of(eight) and cluster.card_of(eight).memory_gb \
        == max(cards)
    cluster.check(_runs(tmp_path, {"gpus": 8, "workers": 8}))


def test_a_run_no_node_type_of_cluster_yaml_holds_is_refused_naming_the_types(tmp_path):
    with pytest.raises(PtdistError) as err:
        Cluster.from_config(CLUSTER_YAML).check(_runs(tmp_path, {"gpus": 16, "workers": 16}))
    message = str(err.value)
    assert f"no node of {CLUSTER_YAML} can hold that" in message
    assert all(name in message for name in _config()["available_node_types"])
    assert "Lower its resources in the sweep spec, use fewer workers, or add a node type" in message
