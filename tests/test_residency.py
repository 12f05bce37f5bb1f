import pytest

from fsdtrain.errors import ConfigError
from fsdtrain.residency import AuditLog, ResidencyError, check_zone, resolve_site_zone


def test_zone_rules():
    check_zone("s3://b/x.tar", "global", "global")
    check_zone("s3://b/x.tar", "global", "cn")
    check_zone("s3://b/x.tar", "cn", "cn")
    with pytest.raises(ResidencyError, match=r"s3://b/x.tar is in zone 'cn'.*site zone 'global'"):
        check_zone("s3://b/x.tar", "cn", "global")
    with pytest.raises(ResidencyError):
        check_zone("s3://b/x.tar", "cn", "eu")


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
