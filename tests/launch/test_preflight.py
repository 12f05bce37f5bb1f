"""Pre-flight checks of ``fsdtrain launch`` (fsdtrain/launch/preflight.py) on resolved configs."""

import socket

import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.launch.preflight import preflight
from fsdtrain.residency import ResidencyError


def config(**changes) -> dict:
    cfg = {
        "trainer": {"num_nodes": 4, "devices": 8, "strategy": "deepspeed_stage_2", "accelerator": "gpu", "accumulate_grad_batches": 1},
        "data": {"train": ["s3://fleet-global/fleet/train/US"], "val": [], "batch_size": 8, "global_batch_size": None},
        "model": {"init_from": None},
        "site": {"zone": "global"},
    }
    for key, value in changes.items():
        section, field = key.split("__")
        cfg[section][field] = value
    return cfg


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("FSDTRAIN_SITE_ZONE", "FSDTRAIN_BUCKET_ZONES", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)


def test_a_consistent_job_passes_and_says_what_it_checked():
    report = preflight(config(), nodes=4, gpus_per_node=8, check_store=False)
    assert report.site_zone == "global"
    assert report.notes == (
        "4 node(s) x 8 process(es) = world size 32, strategy deepspeed_stage_2",
        "global batch 256 = micro batch 8 x accumulation 1 x 32 ranks",
        "site zone global",
        "store check skipped (--skip-store-check)",
    )


def test_node_and_task_counts_must_match_the_job():
    with pytest.raises(ConfigError, match=r"trainer.num_nodes=2 and trainer.devices=8, but the job is --nodes 4 x --gpus-per-node 8"):
        preflight(config(trainer__num_nodes=2), nodes=4, gpus_per_node=8, check_store=False)
    with pytest.raises(ConfigError, match="runs one process; a 32-process job needs ddp or deepspeed_stage_N"):
        preflight(config(trainer__strategy="single_device"), nodes=4, gpus_per_node=8, check_store=False)


def test_the_global_batch_must_split_over_the_world_size():
    with pytest.raises(ConfigError, match="data.global_batch_size 100 does not divide by the world size 32"):
        preflight(config(data__global_batch_size=100), nodes=4, gpus_per_node=8, check_store=False)
    report = preflight(config(data__global_batch_size=512), nodes=4, gpus_per_node=8, check_store=False)
    assert "global batch 512 = micro batch 8 x accumulation 2 x 32 ranks" in report.notes


def test_a_site_zone_must_be_declared(monkeypatch):
    with pytest.raises(ConfigError, match="no site zone: set site.zone .* or FSDTRAIN_SITE_ZONE"):
        preflight(config(site__zone=None), nodes=4, gpus_per_node=8, check_store=False)
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    assert preflight(config(site__zone=None), nodes=4, gpus_per_node=8, check_store=False).site_zone == "cn"
    with pytest.raises(ConfigError, match="is not a zone name"):
        preflight(config(site__zone="China!"), nodes=4, gpus_per_node=8, check_store=False)


def test_data_in_another_zones_bucket_fails_before_any_request(monkeypatch):
    monkeypatch.setenv("FSDTRAIN_BUCKET_ZONES", "fleet-global=global,fleet-cn=cn")
    with pytest.raises(ResidencyError, match="fleet-cn"):
        preflight(config(data__train=["s3://fleet-cn/fleet/train/CN"]), nodes=4, gpus_per_node=8, check_store=False)


def test_the_store_must_be_reachable(monkeypatch):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=rf"object store http://127.0.0.1:{port} \(AWS_ENDPOINT_URL\) is not reachable .* --skip-store-check"):
        preflight(config(), nodes=4, gpus_per_node=8)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        report = preflight(config(), nodes=4, gpus_per_node=8)
    assert report.notes[-1] == f"object store http://127.0.0.1:{port} reachable (1 s3:// location(s))"


def test_file_data_must_exist(tmp_path):
    with pytest.raises(ConfigError, match=r"file://.*/none does not exist on this machine; .* --skip-store-check"):
        preflight(config(data__train=[f"file://{tmp_path}/none"]), nodes=4, gpus_per_node=8)
    assert preflight(config(data__train=[f"file://{tmp_path}"]), nodes=4, gpus_per_node=8).notes[-1] == "1 data location(s) on file://, all present"
