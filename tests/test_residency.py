import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.residency import (
    COUNTRY_ZONES,
    ResidencyError,
    check_country_zone,
    check_zone,
    resolve_site_zone,
    zone_of_country,
)
from fsdtrain.store.gate import AuditLog


def test_zone_rules():
    check_zone("s3://b/x.tar", "global", "global")
    check_zone("s3://b/x.tar", "global", "cn")
    check_zone("s3://b/x.tar", "cn", "cn")
    with pytest.raises(ResidencyError, match=r"s3://b/x.tar is in zone 'cn'.*site zone 'global'"):
        check_zone("s3://b/x.tar", "cn", "global")
    with pytest.raises(ResidencyError):
        check_zone("s3://b/x.tar", "cn", "eu")


def test_a_countrys_zone_comes_from_the_policy():
    assert COUNTRY_ZONES == {"CN": "cn"}
    assert zone_of_country("CN") == "cn" and zone_of_country("US") == zone_of_country("DE") == "global"
    assert check_country_zone("CN", "cn") is None and check_country_zone("US", "global") is None
    assert check_country_zone("CN", "global") == (
        "zone 'global' is not the residency policy's zone 'cn' for country CN (docs/residency.md); data of CN belongs in zone 'cn'"
    )
    assert "policy's zone 'global' for country US" in check_country_zone("US", "cn")


def test_site_zone_defaults_to_global_and_reads_env(monkeypatch):
    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    assert resolve_site_zone() == "global"
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    assert resolve_site_zone() == "cn"
    assert resolve_site_zone("eu") == "eu"
    with pytest.raises(ConfigError):
        resolve_site_zone("CN China")


def test_audit_log_appends_one_json_line_per_shard(tmp_path):
    log = AuditLog(tmp_path / "a" / "audit.jsonl", job="j", rank=1)
    log.record("s3://b/s0.tar", "cn", "ab" * 32)
    log.record("s3://b/s1.tar", "global", None)
    rows = AuditLog.read(tmp_path / "a" / "audit.jsonl")
    assert [r["url"] for r in rows] == ["s3://b/s0.tar", "s3://b/s1.tar"]
    assert rows[0]["rank"] == 1 and rows[0]["job"] == "j" and rows[0]["zone"] == "cn"


def test_every_read_path_refuses_another_zones_bucket_before_any_request(use_zone_key, tmp_path, capsys, monkeypatch):
    """eval, data verify and training at a global site, given CN shards in the CN bucket: with the
    global zone's key the store refuses every CN request (tests/store), so a ResidencyError rather than
    an access error shows that nothing was requested; and no shard is in the audit log."""
    from fsdtrain.cli import main
    from fsdtrain.synth.fleet import synth_fleet
    from helpers.fleet import TINY_CLIP

    monkeypatch.delenv("FSDTRAIN_SITE_ZONE", raising=False)
    url = f"s3://fleet-cn/{tmp_path.name}"
    synth_fleet(url, ["CN"], 1, split="val", clip=TINY_CLIP)  # with the admin key
    use_zone_key("global")
    want = f"fsdtrain: error: residency: {url}/val/CN is in zone 'cn' but this job runs at site zone 'global'"
    audit = tmp_path / "audit.jsonl"
    runs = {
        "eval": ["eval", "--ckpt", str(tmp_path / "never-read.safetensors"), "--data", f"{url}/val/CN", "--audit-log", str(audit)],
        "verify": ["data", "verify", f"{url}/val/CN"],
        "fit": ["fit", "--config", "configs/finetune_cn.yaml", "--site.zone", "global", "--data.train", f"[{url}/val/CN]", "--data.val", "[]",
                "--workdir", str(tmp_path / "run"), "--data.audit_log", str(audit), "--wandb.mode", "disabled"],
    }  # fmt: skip
    for name, argv in runs.items():
        assert main(argv) == 2, name
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].startswith(want) and "denied" not in err.lower(), (name, err)
    assert not audit.exists()
