"""What the job files of `fsdtrain launch` run (fsdtrain/launch/templates.py): fit without a progress bar
(plain lines in batch logs), as the real CLI parses the job's own command line; and the container image
the Kubernetes job names (launch/container/)."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from fsdtrain.launch.jobs import DEFAULT_IMAGE, LaunchSpec, render_job, resolve_config

REPO = Path(__file__).resolve().parents[2]
FIT_KINDS = ("slurm", "torchrun", "deepspeed", "k8s")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("FSDTRAIN_SITE_ZONE", "FSDTRAIN_BUCKET_ZONES", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def fit_command(kind: str, text: str) -> tuple[dict, list[str]]:
    """The config a job file writes (or mounts) and the flags its ``fsdtrain fit --config`` command passes after it."""
    if kind == "k8s":
        config_map, job = yaml.safe_load_all(text)
        [container] = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
        command = container["command"]
        assert command[:6] == ["python", "-m", "fsdtrain", "fit", "--config", "/etc/fsdtrain/config.yaml"]
        return yaml.safe_load(config_map["data"]["config.yaml"]), command[6:]
    config = re.search(r"<<'FSDTRAIN_CONFIG'\n(.*?)\nFSDTRAIN_CONFIG\n", text, re.S).group(1)
    joined = text.replace("\\\n", " ")  # the command's continuation lines
    [line] = [ln for ln in joined.splitlines() if 'fsdtrain fit --config "$CONFIG"' in ln and not ln.lstrip().startswith("#")]
    return yaml.safe_load(config), shlex.split(line.split('fsdtrain fit --config "$CONFIG"', 1)[1])


@pytest.mark.parametrize("kind", FIT_KINDS)
def test_a_rendered_job_turns_the_progress_bar_off(kind, tmp_path):
    """The job's own fit flags, parsed by fit's CLI with its config, leave the bar off; FleetCLI then logs
    plain lines (ProgressLines, fsdtrain/train/callbacks.py) instead."""
    job = render_job(LaunchSpec(kind, "configs/pretrain_global.yaml", nodes=2, gpus_per_node=4), check_store=False)
    config, flags = fit_command(kind, job.text)
    assert config["trainer"].get("enable_progress_bar") is not False  # the config alone would draw a bar: the flag turns it off
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    resolved = resolve_config(str(path), flags, nodes=2, gpus_per_node=4)
    assert resolved["trainer"]["enable_progress_bar"] is False


def test_overrides_after_the_job_flags_still_win(tmp_path):
    """--no-embed passes the user's fit flags after the job's own: one who wants the bar back gets it."""
    spec = LaunchSpec("slurm", "configs/pretrain_global.yaml", nodes=1, gpus_per_node=2, embed=False, overrides=["--trainer.enable_progress_bar", "true"])
    job = render_job(spec, check_store=False)
    [line] = [ln for ln in job.text.replace("\\\n", " ").splitlines() if ln.startswith("srun ")]
    assert line.index("--trainer.enable_progress_bar false") < line.index("--trainer.enable_progress_bar true")


def test_the_k8s_job_names_the_image_built_from_launch_container():
    job = render_job(LaunchSpec("k8s", "configs/pretrain_global.yaml", nodes=2, gpus_per_node=8), check_store=False)
    images = {c["image"] for spec in list(yaml.safe_load_all(job.text))[1]["spec"]["pytorchReplicaSpecs"].values() for c in spec["template"]["spec"]["containers"]}
    assert images == {DEFAULT_IMAGE}
    readme = (REPO / "launch" / "container" / "README.md").read_text()
    # the default is the tag the recipe's build command makes (and the command's --image help names it)
    assert f"docker build -f launch/container/Dockerfile -t {DEFAULT_IMAGE} ." in readme
    assert f"-t {DEFAULT_IMAGE} ." in (REPO / "launch" / "container" / "Dockerfile").read_text()
    job = render_job(LaunchSpec("k8s", "configs/pretrain_global.yaml", nodes=1, gpus_per_node=8, image="cr.example.cn/fsd:7"), check_store=False)
    assert "image: cr.example.cn/fsd:7" in job.text and DEFAULT_IMAGE not in job.text


def test_the_container_recipe_installs_the_pinned_versions():
    dockerfile = (REPO / "launch" / "container" / "Dockerfile").read_text()
    base = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M).group(1)
    assert base.startswith("nvidia/cuda:") and not base.endswith(":latest")  # a fixed base, as the libraries are
    assert re.search(r"^FROM \$\{BASE\}$", dockerfile, re.M)
    installs = [ln for ln in dockerfile.replace("\\\n", " ").splitlines() if "pip install" in ln]
    assert installs and all("-c constraints.txt" in ln for ln in installs)
    # the Python the constraints were tested with
    tested = re.search(r"\(Python (\d+\.\d+),", (REPO / "constraints.txt").read_text()).group(1)
    assert f"python{tested} -m venv" in dockerfile
    context = (REPO / "launch" / "container" / "Dockerfile.dockerignore").read_text().splitlines()
    copied = {p for ln in dockerfile.splitlines() if ln.startswith("COPY ") for p in ln.split()[1:-1]}
    assert context[context.index("*") + 1 :] and all(f"!{p.rstrip('/')}" in {c.rstrip("/") for c in context} for p in copied), copied
