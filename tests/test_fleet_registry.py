"""Fleet registry and `edge-fleet publish`: real bundles, real signatures, real SQLite."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from edge_agent.bundle import HashMismatch, SignatureError, TrustStore, generate_keypair, sha256_file
from edge_agent.bundle.archive import read_signature_doc
from edge_fleet.cli import main as fleet_main
from edge_fleet.publish import publish_bundle
from edge_fleet.registry import open_registry


def _signature_member(path: Path) -> dict:
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert names[1] == "signature.json"
        return json.loads(tar.extractfile(names[1]).read())


def test_publish_valid_bundle_is_stored_and_listed(tmp_path, int8_bundle, digits, capsys):
    home = tmp_path / "fleet"
    rc = fleet_main(["publish", str(int8_bundle), "--trust", str(digits.pub), "--home", str(home), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    size, sha = sha256_file(int8_bundle)
    assert out["sha256"] == sha and out["size"] == size and out["profile"] == "raspberry-pi-4"
    with open_registry(home / "fleet.db") as reg:
        rec = reg.bundle_by_sha(sha)
        assert rec is not None and rec.version == 1
        assert rec.path.read_bytes() == int8_bundle.read_bytes()  # copied into the fleet store
        assert rec.signature == _signature_member(int8_bundle) == read_signature_doc(int8_bundle)
        assert rec.manifest["name"] == rec.name and rec.manifest["profile"] == "raspberry-pi-4"
    # publishing the same file again is idempotent
    assert fleet_main(["publish", str(int8_bundle), "--trust", str(digits.pub), "--home", str(home)]) == 0
    assert fleet_main(["bundles", "--home", str(home), "--json"]) == 0
    capsys.readouterr()


def test_tampered_bundle_is_refused_and_not_stored(tmp_path, int8_bundle, digits, capsys):
    bad = tmp_path / "tampered.edgebundle"
    data = bytearray(int8_bundle.read_bytes())
    with tarfile.open(int8_bundle) as tar:
        last = tar.getmembers()[-1]
    data = bytearray(int8_bundle.read_bytes())
    data[last.offset_data + last.size // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    reg = open_registry(tmp_path / "fleet.db")
    with pytest.raises(HashMismatch):
        publish_bundle(reg, bad, TrustStore.from_paths([digits.pub]))
    assert reg.bundles() == []
    assert [p for p in reg.store_dir.iterdir()] == []  # no partial copy left behind
    rc = fleet_main(["publish", str(bad), "--trust", str(digits.pub), "--db", str(tmp_path / "fleet.db")])
    err = capsys.readouterr().err
    assert rc == HashMismatch.exit_code and err.count("\n") == 1 and "error:" in err


def test_unsigned_and_untrusted_bundles_are_refused(tmp_path, int8_bundle, digits, capsys):
    unsigned = tmp_path / "unsigned.edgebundle"
    with tarfile.open(int8_bundle) as src, tarfile.open(unsigned, "w", format=tarfile.USTAR_FORMAT) as dst:
        for m in src.getmembers():
            if m.name != "signature.json":
                dst.addfile(m, io.BytesIO(src.extractfile(m).read()))
    reg = open_registry(tmp_path / "fleet.db")
    with pytest.raises(SignatureError, match="not signed"):
        publish_bundle(reg, unsigned, TrustStore.from_paths([digits.pub]))
    _, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(SignatureError, match="not trusted"):
        publish_bundle(reg, int8_bundle, TrustStore.from_paths([other_pub]))
    assert reg.bundles() == []
    rc = fleet_main(["publish", str(int8_bundle), "--trust", str(other_pub), "--db", str(tmp_path / "fleet.db")])
    assert rc == SignatureError.exit_code and "not trusted" in capsys.readouterr().err
    # no trusted key at all: a clear error, not a crash
    empty_home = tmp_path / "empty"
    rc = fleet_main(["publish", str(int8_bundle), "--home", str(empty_home)])
    assert rc != 0 and "--trust" in capsys.readouterr().err


def test_devices_group_and_status_on_empty_registry(tmp_path, capsys):
    db = str(tmp_path / "fleet.db")
    assert fleet_main(["devices", "group", "cam-1", "lobby", "--db", db, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["group"] == "lobby"
    assert fleet_main(["status", "--db", db, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(d["id"], d["group"], d["presence"]) for d in status["devices"]] == [("cam-1", "lobby", "unknown")]
    # deploying something never published fails with its own code
    rc = fleet_main(["deploy", "digits:9", "--group", "lobby", "--db", db])
    assert rc == 4 and "not published" in capsys.readouterr().err
