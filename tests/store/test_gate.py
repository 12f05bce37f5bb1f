"""The zone gate (fsdtrain/store/gate.py): every check before the request, shard reads audited."""

import os
import pickle

import pytest

from fsdtrain.residency import ResidencyError
from fsdtrain.store import objects
from fsdtrain.store.gate import AuditLog, ZoneGate


@pytest.fixture
def zoned(monkeypatch, tmp_path):
    """Bucket zones declared for two buckets that do not exist: any request to them would fail with a
    StoreError (no store at this endpoint), so a ResidencyError shows that none was sent."""
    monkeypatch.setenv(objects.BUCKET_ZONES_ENV, "fleet-global=global,fleet-cn=cn")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing answers
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    objects.reset_clients()
    yield tmp_path
    objects.reset_clients()


@pytest.mark.parametrize("call", ["read", "read_shard", "exists", "list_keys", "copy"])
def test_another_zones_bucket_is_refused_before_any_request(zoned, call):
    gate = ZoneGate("global", audit=AuditLog(zoned / "audit.jsonl", job="t"))
    url = "s3://fleet-cn/demo/train/CN/shard-000000.tar"
    args = {"read": (url,), "read_shard": (url,), "exists": (url,), "list_keys": ("s3://fleet-cn/demo",), "copy": (url, url + ".copy")}[call]
    kwargs = {"zone": "cn", "sha256": None} if call == "read_shard" else {"zone": "cn"} if call == "copy" else {}
    with pytest.raises(ResidencyError, match="zone 'cn' but this job runs at site zone 'global'"):
        getattr(gate, call)(*args, **kwargs)
    assert not (zoned / "audit.jsonl").exists()  # refused reads are not recorded as opened


def test_a_copy_into_another_zones_bucket_is_refused_before_any_request(zoned):
    """A server-side copy moves bytes past every client check: CN data may not be copied into a
    global bucket, even by a CN site that may read both."""
    gate = ZoneGate("cn", audit=AuditLog(zoned / "audit.jsonl", job="t"))
    with pytest.raises(ResidencyError, match="fleet-global/a/shard-000000.tar is in a bucket of zone 'global'; data of zone 'cn' is not copied there"):
        gate.copy("s3://fleet-cn/a/shard-000000.tar", "s3://fleet-global/a/shard-000000.tar", zone="cn")
    assert not (zoned / "audit.jsonl").exists()


def test_check_urls_refuses_all_before_the_first_request(zoned):
    with pytest.raises(ResidencyError, match="fleet-cn"):
        ZoneGate("global").check_urls(["s3://fleet-global/a", "s3://fleet-cn/b"])
    ZoneGate("cn").check_urls(["s3://fleet-global/a", "s3://fleet-cn/b"])  # global data is readable everywhere


def test_data_zone_is_checked_where_the_bucket_declares_none(tmp_path):
    shard = tmp_path / "shard-000000.tar"
    shard.write_bytes(b"bytes")
    gate = ZoneGate("global", audit=AuditLog(tmp_path / "audit.jsonl", job="t", rank=1))
    with pytest.raises(ResidencyError):
        gate.read(str(shard), zone="cn")
    with pytest.raises(ResidencyError):
        gate.read_shard(str(shard), zone="cn", sha256="x")
    assert gate.read(str(shard), zone="global", byte_range=(1, 3)) == b"yt"
    assert gate.read_shard(str(shard), zone="global", sha256="abc") == b"bytes"
    assert gate.read_range(str(shard), zone="global", byte_range=(0, 2), sha256="abc", sample="k-000000") == b"by"
    assert gate.read(str(shard)) == b"bytes"  # no zone known (a manifest): checked by bucket, not recorded
    part, whole, clip = AuditLog.read(tmp_path / "audit.jsonl")  # one record per request of a zone's data, refused ones none
    assert (part["url"], part["zone"], part["sha256"], part["range"]) == (str(shard), "global", None, [1, 3])
    assert (whole["url"], whole["zone"], whole["sha256"], whole["job"], whole["rank"]) == (str(shard), "global", "abc", "t", 1)
    assert "range" not in whole and (clip["sample"], clip["range"], clip["sha256"]) == ("k-000000", [0, 2], "abc")
    assert part["pid"] == whole["pid"] == os.getpid()


def test_site_zone_given_once_and_checked(monkeypatch):
    monkeypatch.setenv("FSDTRAIN_SITE_ZONE", "cn")
    assert ZoneGate().site_zone == "cn" and ZoneGate("eu").site_zone == "eu"
    with pytest.raises(Exception, match="not a zone name"):
        ZoneGate("CN China")


def test_a_gate_with_its_audit_log_crosses_a_process_boundary(tmp_path):
    """Loader workers started by spawn get the stream (and its gate) pickled: the audit lock is remade."""
    gate = ZoneGate("cn", audit=AuditLog(tmp_path / "a.jsonl", job="t"))
    copy = pickle.loads(pickle.dumps(gate))
    copy.audit.record("s3://b/x.tar", "cn", None)
    assert copy.site_zone == "cn" and len(AuditLog.read(tmp_path / "a.jsonl")) == 1
