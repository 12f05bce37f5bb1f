"""``fsdtrain launch`` (fsdtrain/launch/jobs.py): job files for SLURM, torchrun, DeepSpeed and Kubernetes
rendered from one config with the resolved config inside; shell files pass ``bash -n``, the Kubernetes
file is a PyTorchJob; no credentials are written; the files in launch/ are what the command renders."""

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from fsdtrain.cli import main
from fsdtrain.launch.jobs import LaunchSpec, hostfile, render_job, resolve_config
from fsdtrain.launch.templates import FILE_NAMES

REPO = Path(__file__).resolve().parents[2]
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.chdir(REPO)
    for name in ("FSDTRAIN_SITE_ZONE", "FSDTRAIN_BUCKET_ZONES", "AWS_ENDPOINT_URL", "AWS_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def launch(capsys, *args: str) -> tuple[int, str, str]:
    code = main(["launch", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def embedded_config(text: str) -> dict:
    """The config a shell job file writes with its heredoc."""
    found = re.search(r"<<'FSDTRAIN_CONFIG'\n(.*?)\nFSDTRAIN_CONFIG\n", text, re.S)
    assert found, text
    return yaml.safe_load(found.group(1))


def bash_n(text: str, tmp_path: Path) -> None:
    path = tmp_path / "job.sh"
    path.write_text(text)
    proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sbatch_uses_srun_with_one_task_per_gpu_and_requeues(capsys, tmp_path):
    code, out, err = launch(capsys, "slurm", "--config", "configs/pretrain_global.yaml", "--nodes", "4", "--gpus-per-node", "2", "--dry-run",
                            "--skip-store-check", "--", "--trainer.max_steps", "777")  # fmt: skip
    assert code == 0, err
    bash_n(out, tmp_path)
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2", "#SBATCH --signal=USR1@90", "#SBATCH --requeue"):
        assert line in out.splitlines()
    srun = [line for line in out.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1 and '-m fsdtrain fit --config "$CONFIG"' in srun[0]
    assert "--trainer.num_nodes 4 --trainer.devices 2 --ckpt_path last" in out
    config = embedded_config(out)
    assert config["trainer"]["num_nodes"] == 4 and config["trainer"]["devices"] == 2 and config["trainer"]["max_steps"] == 777
    # the model's cameras and window are linked from the data's when the job parses it, never copied
    assert config["site"]["zone"] == "global" and "window" in config["data"] and not {"window", "cameras"} & set(config["model"])
    assert "ckpt_path" not in config
    assert "fsdtrain: pre-flight: global batch 64 = micro batch 8 x accumulation 1 x 8 ranks" in err


@pytest.mark.parametrize("kind", ["torchrun", "deepspeed"])
def test_torchrun_and_deepspeed_scripts_pass_bash_n(capsys, tmp_path, kind):
    code, out, err = launch(capsys, kind, "--config", "configs/pretrain_global.yaml", "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--skip-store-check")
    assert code == 0, err
    bash_n(out, tmp_path)
    assert embedded_config(out)["trainer"]["devices"] == 8
    if kind == "torchrun":
        assert "--rdzv-backend c10d" in out and '--max-restarts "$MAX_RESTARTS"' in out and "NNODES=2" in out and "NPROC_PER_NODE=8" in out
        assert 'CONFIG=$(mktemp' in out  # each node writes its own copy
    else:
        assert "--num_nodes 2 --num_gpus 8" in out and "--no_local_rank" in out and "--module fsdtrain fit" in out


def test_the_deepspeed_script_refuses_a_hostfile_of_another_size(capsys, tmp_path):
    code, out, _ = launch(capsys, "deepspeed", "--config", "configs/pretrain_global.yaml", "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--skip-store-check")
    assert code == 0
    check = out[out.index("awk -v nodes"):out.index('"$HOSTFILE"') + len('"$HOSTFILE"')]  # fmt: skip
    for hosts, ok in [(hostfile(2, 8), True), (hostfile(3, 8), False), (hostfile(2, 4), False)]:
        (tmp_path / "hostfile").write_text(hosts)
        proc = subprocess.run(["bash", "-c", f"HOSTFILE={tmp_path / 'hostfile'}\n{check}"], capture_output=True, text=True)
        assert (proc.returncode == 0) == ok, proc.stderr


def test_k8s_is_a_pytorchjob_with_master_and_workers(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://seaweedfs.storage:8333")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    code, out, err = launch(capsys, "k8s", "--config", "configs/pretrain_global.yaml", "--nodes", "3", "--gpus-per-node", "4", "--dry-run",
                            "--skip-store-check", "--image", "example.org/fsdtrain:1.0")  # fmt: skip
    assert code == 0, err
    assert SECRET not in out
    config_map, job = yaml.safe_load_all(out)
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["name"] == "fsdtrain-pretrain-global-config"
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "PyTorchJob" and job["metadata"]["name"] == "fsdtrain-pretrain-global"
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] == 2
    for spec in replicas.values():
        assert spec["restartPolicy"] == "OnFailure"
        pod = spec["template"]["spec"]
        [container] = pod["containers"]
        assert container["name"] == "pytorch" and container["image"] == "example.org/fsdtrain:1.0"
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert container["command"][:6] == ["python", "-m", "fsdtrain", "fit", "--config", "/etc/fsdtrain/config.yaml"]
        assert container["command"][6:] == ["--trainer.num_nodes", "3", "--trainer.devices", "4", "--ckpt_path", "last", "--trainer.enable_progress_bar", "false"]
        env = {e["name"]: e for e in container["env"]}
        assert env["FSDTRAIN_SITE_ZONE"]["value"] == "global" and env["AWS_ENDPOINT_URL"]["value"] == "http://seaweedfs.storage:8333"
        assert "value" not in env["AWS_SECRET_ACCESS_KEY"] and env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "AWS_SECRET_ACCESS_KEY"
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["config"] == "/etc/fsdtrain" and {v["name"] for v in pod["volumes"]} == set(mounts)
    config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert config["trainer"]["num_nodes"] == 3 and config["trainer"]["devices"] == 4

    code, out, _ = launch(capsys, "k8s", "--config", "configs/pretrain_global.yaml", "--nodes", "1", "--gpus-per-node", "8", "--dry-run", "--skip-store-check")
    assert code == 0 and set(list(yaml.safe_load_all(out))[1]["spec"]["pytorchReplicaSpecs"]) == {"Master"}


def test_shell_files_take_the_endpoint_but_never_a_key(capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://store.example.com:8333")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEKEYID0001")
    for kind in ("slurm", "torchrun", "deepspeed"):
        code, out, _ = launch(capsys, kind, "--config", "configs/pretrain_global.yaml", "--nodes", "2", "--gpus-per-node", "8", "--dry-run", "--skip-store-check")
        assert code == 0 and "export AWS_ENDPOINT_URL=http://store.example.com:8333" in out
        assert SECRET not in out and "AKIAEXAMPLEKEYID0001" not in out
    # a key that made its way into the config is refused, not written
    code, out, err = launch(capsys, "slurm", "--config", "configs/pretrain_global.yaml", "--nodes", "2", "--gpus-per-node", "8", "--dry-run",
                            "--skip-store-check", "--", "--wandb.name", SECRET)  # fmt: skip
    assert code == 2 and out == "" and "would contain the value of $AWS_SECRET_ACCESS_KEY" in err


def test_the_embedded_config_is_one_fit_accepts(tmp_path):
    job = render_job(LaunchSpec("slurm", "configs/demo.yaml", nodes=2, gpus_per_node=3, overrides=["--site.zone", "cn"]), check_store=False)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(embedded_config(job.text)))
    again = resolve_config(str(path), [], 2, 3)
    assert again == embedded_config(job.text) and again["site"]["zone"] == "cn"
    assert "export FSDTRAIN_SITE_ZONE=cn" in job.text


def test_without_dry_run_the_file_is_written_with_how_to_submit_it(capsys, tmp_path):
    code, out, err = launch(capsys, "deepspeed", "--config", "configs/pretrain_global.yaml", "--nodes", "2", "--gpus-per-node", "8",
                            "--skip-store-check", "--out", f"{tmp_path}/job/", "--name", "My Run")  # fmt: skip
    assert code == 0, err
    assert out.splitlines() == [
        f"fsdtrain: wrote {tmp_path}/job/run.sh (and {tmp_path}/job/hostfile.example)",
        f"fsdtrain: submit with: cd {tmp_path}/job && HOSTFILE=hostfile bash run.sh   # on the first node (hostfile: see hostfile.example)",
    ]
    assert "fsdtrain deepspeed job `my-run`" in (tmp_path / "job" / "run.sh").read_text()
    assert (tmp_path / "job" / "hostfile.example").read_text().splitlines()[-2:] == ["node00 slots=8", "node01 slots=8"]
    assert os.access(tmp_path / "job" / "run.sh", os.X_OK) and sorted(p.name for p in (tmp_path / "job").iterdir()) == ["hostfile.example", "run.sh"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["slurm", "--nodes", "0", "--gpus-per-node", "8"], "--nodes must be >= 1, got 0"),
        (["torchrun", "--nodes", "3", "--gpus-per-node", "1", "--", "--data.global_batch_size", "8"], "data.global_batch_size 8 does not divide by the world size 3"),
        (["slurm", "--nodes", "1", "--gpus-per-node", "1", "--", "--site.zone", "", "--trainer.max_stepz", "1"], "max_stepz"),
        (["k8s", "--nodes", "1", "--gpus-per-node", "1", "--name", "9lives"], "job name '9lives' must start with a letter"),
    ],
    ids=["nodes", "batch", "bad-flag", "name"],
)
def test_bad_input_is_one_line(capsys, args, message):
    code, out, err = launch(capsys, args[0], "--config", "configs/pretrain_global.yaml", "--dry-run", "--skip-store-check", *args[1:])
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("fsdtrain: error:") and message in err.strip().splitlines()[-1], err


def test_no_site_zone_and_no_config_are_one_line(capsys):
    code, _, err = launch(capsys, "slurm", "--config", "configs/demo.yaml", "--nodes", "1", "--gpus-per-node", "2", "--dry-run", "--skip-store-check")
    assert code == 2 and "no site zone" in err
    code, _, err = launch(capsys, "slurm", "--config", "configs/none.yaml", "--nodes", "1", "--gpus-per-node", "2", "--dry-run")
    assert code == 2 and "no config file at configs/none.yaml" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["launch", "pbs", "--config", "configs/demo.yaml", "--nodes", "1", "--gpus-per-node", "1"])
    assert exit_info.value.code == 2 and "invalid choice: 'pbs'" in capsys.readouterr().err


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["launch", "--help"])
    assert exit_info.value.code == 0
    assert "--gpus-per-node" in capsys.readouterr().out


@pytest.mark.parametrize("kind", sorted(FILE_NAMES))
def test_the_files_in_launch_are_what_the_command_renders(kind):
    """launch/<kind>/ is `fsdtrain launch <kind> --config configs/pretrain_global.yaml --nodes 2 --gpus-per-node 8
    --no-embed --skip-store-check --out launch/<kind>/` (launch/README.md); re-render after changing a template."""
    job = render_job(LaunchSpec(kind, "configs/pretrain_global.yaml", nodes=2, gpus_per_node=8, embed=False), check_store=False)
    assert (REPO / "launch" / kind / FILE_NAMES[kind]).read_text() == job.text
    if kind == "deepspeed":
        assert (REPO / "launch" / "deepspeed" / "hostfile.example").read_text() == hostfile(2, 8)


def test_k8s_without_embedding_ships_the_pieces_the_config_references(tmp_path):
    """``--no-embed`` puts the config file as it is in the ConfigMap, and every YAML piece it references
    (``net: model/resnet34_6cam.yaml``) beside it, mounted at its relative path: the pod resolves the
    config exactly as `fsdtrain fit` does here."""
    job = render_job(LaunchSpec("k8s", "configs/pretrain_global.yaml", nodes=2, gpus_per_node=8, embed=False), check_store=False)
    config_map, pytorchjob = list(yaml.safe_load_all(job.text))
    volume = next(v for v in pytorchjob["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["volumes"] if v["name"] == "config")
    items = {i["key"]: i["path"] for i in volume["configMap"]["items"]}
    assert items["config.yaml"] == "config.yaml" and "model/resnet34_6cam.yaml" in items.values()
    mounted = tmp_path / "etc-fsdtrain"  # what the pod sees at /etc/fsdtrain
    for key, rel in items.items():
        (mounted / rel).parent.mkdir(parents=True, exist_ok=True)
        (mounted / rel).write_text(config_map["data"][key])
    assert resolve_config(str(mounted / "config.yaml"), [], 2, 8) == resolve_config("configs/pretrain_global.yaml", [], 2, 8)


# --- ingest jobs: `fsdtrain launch slurm|k8s --parts N -- data write ...` -------------------------

INGEST_ARGS = ["data", "write", "--raw", "s3://fleet-raw/drives", "--out", "s3://fleet-global/fleet", "--workers", "8", "--fps", "10"]


def fake_python(tmp_path: Path) -> Path:
    """A stand-in for python on the job's command line: prints the arguments it got, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "python"
    script.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    script.chmod(0o755)
    return script


def test_slurm_ingest_job_is_an_array_of_parts(capsys, tmp_path):
    code, out, err = launch(capsys, "slurm", "--parts", "4", "--dry-run", "--", *INGEST_ARGS)
    assert code == 0, err
    bash_n(out, tmp_path)
    lines = out.splitlines()
    assert "#SBATCH --array=1-4" in lines and "#SBATCH --cpus-per-task=8" in lines and "export FSDTRAIN_SITE_ZONE=global" in lines
    job = tmp_path / "ingest.sbatch"
    job.write_text(out)
    env = {"PATH": os.environ["PATH"], "PYTHON": str(fake_python(tmp_path)), "SLURM_ARRAY_TASK_ID": "3"}
    ran = subprocess.run(["bash", str(job)], capture_output=True, text=True, env=env, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["-m", "fsdtrain", *INGEST_ARGS, "--part", "3/4"]  # array task 3 runs part 3 of 4


def test_k8s_ingest_job_is_an_indexed_job_with_n_completions(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://seaweedfs.storage:8333")
    code, out, err = launch(capsys, "k8s", "--parts", "4", "--image", "my.registry/fsdtrain:1.0", "--name", "ingest-cn", "--dry-run", "--",
                            *INGEST_ARGS, "--site.zone", "cn")  # fmt: skip
    assert code == 0, err
    (job,) = list(yaml.safe_load_all(out))
    assert (job["apiVersion"], job["kind"], job["metadata"]["name"]) == ("batch/v1", "Job", "ingest-cn")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == 4 and job["spec"]["parallelism"] == 4
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "my.registry/fsdtrain:1.0" and env["AWS_ENDPOINT_URL"] == "http://seaweedfs.storage:8333"
    assert env["FSDTRAIN_SITE_ZONE"] == "cn" and "AWS_SECRET_ACCESS_KEY" in env and env["AWS_SECRET_ACCESS_KEY"] is None  # from the Secret
    fake_python(tmp_path)
    run_env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "JOB_COMPLETION_INDEX": "0"}
    ran = subprocess.run(container["command"], capture_output=True, text=True, env=run_env, timeout=30)  # the pod's command, as the kubelet runs it
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == ["-m", "fsdtrain", *INGEST_ARGS, "--site.zone", "cn", "--part", "1/4"]  # index 0 runs part 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["torchrun", "--parts", "2", "--", *INGEST_ARGS], "an ingest job renders for slurm or k8s, not torchrun"),
        (["slurm", "--parts", "0", "--", *INGEST_ARGS], "--parts must be >= 1, got 0"),
        (["slurm", "--parts", "2", "--", *INGEST_ARGS, "--part", "1/2"], "sets --part I/2 for each part itself"),
        (["slurm", "--parts", "2", "--config", "configs/demo.yaml", "--", *INGEST_ARGS], "--config is for training jobs"),
        (["slurm", "--parts", "2"], "an ingest job is `fsdtrain launch slurm|k8s --parts N -- data write"),
        (["slurm", "--config", "configs/demo.yaml"], "launch slurm needs --nodes, --gpus-per-node for a training job"),
    ],
    ids=["torchrun", "zero", "part", "config", "no-write", "training"],
)
def test_bad_ingest_jobs_are_one_line(capsys, args, message):
    code, out, err = launch(capsys, *args[:1], "--dry-run", *args[1:])
    assert code == 2 and out == ""
    assert err.strip().splitlines()[-1].startswith("fsdtrain: error:") and message in err.strip().splitlines()[-1], err


@pytest.mark.parametrize("kind", ["slurm", "k8s"])
def test_the_ingest_files_in_launch_are_what_the_command_renders(kind):
    """launch/<kind>/ingest* is `fsdtrain launch <kind> --parts 8 --out launch/<kind>/ -- data write --raw s3://fleet-raw/drives
    --out s3://fleet-global/fleet --workers 8` (launch/README.md); re-render after changing a template."""
    from fsdtrain.launch.jobs import IngestJobSpec, render_ingest_job
    from fsdtrain.launch.templates import INGEST_FILE_NAMES

    args = ["--raw", "s3://fleet-raw/drives", "--out", "s3://fleet-global/fleet", "--workers", "8"]
    job = render_ingest_job(IngestJobSpec(kind, 8, args, cpus=8))
    assert (REPO / "launch" / kind / INGEST_FILE_NAMES[kind]).read_text() == job.text
