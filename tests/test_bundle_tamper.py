"""Tamper suite: every way a bundle can be damaged or forged is refused with its own error,
and nothing is ever written outside the unpack target."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from edge_agent.bundle import (
    CorruptBundle,
    HashMismatch,
    Manifest,
    ProfileMismatch,
    SignatureError,
    TrustStore,
    UnsafeMember,
    UnsupportedSchema,
    generate_keypair,
    load_private_key,
    verify_bundle,
)
from edge_agent.bundle.signing import sign_manifest
from edge_agent.cli import main as agent_main


def members(path: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(path) as tar:
        return [(m, tar.extractfile(m).read() if m.isreg() else b"") for m in tar.getmembers()]


def repack(dst: Path, items: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(dst, "w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in items:
            info = tarfile.TarInfo(info.name) if isinstance(info, str) else info
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return dst


def extra_member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data)
    return info, data


@pytest.fixture()
def trust(digits) -> TrustStore:
    return TrustStore.from_paths([digits.pub])


@pytest.fixture()
def target(tmp_path) -> Path:
    return tmp_path / "sandbox" / "unpacked"


def assert_nothing_written(target: Path) -> None:
    parent = target.parent
    assert not target.exists()
    leftovers = [p for p in parent.rglob("*")] if parent.exists() else []
    assert leftovers == [], f"files left behind: {leftovers}"


def test_good_bundle_verifies_and_unpacks(int8_bundle, trust, target):
    vb = verify_bundle(int8_bundle, trust, profile="raspberry-pi-4", unpack_to=target)
    assert vb.manifest.precision == "int8-static"
    assert (target / vb.manifest.model_file).is_file()
    assert sorted(p.name for p in target.rglob("*") if p.is_file()) == ["model.onnx", "reference_stats.json", "selftest.npz"]


def test_flipped_byte_in_model_file(int8_bundle, trust, target, tmp_path):
    items = members(int8_bundle)
    info, data = next((i, d) for i, d in items if i.name.endswith(".onnx"))
    flipped = bytearray(data)
    flipped[len(flipped) // 2] ^= 0xFF
    items = [(i, bytes(flipped) if i.name == info.name else d) for i, d in items]
    bad = repack(tmp_path / "flipped.edgebundle", items)
    with pytest.raises(HashMismatch, match="SHA-256 differs"):
        verify_bundle(bad, trust, unpack_to=target)
    assert_nothing_written(target)


def test_edited_manifest_breaks_signature(int8_bundle, trust, target, tmp_path):
    items = members(int8_bundle)
    manifest = json.loads(items[0][1])
    manifest["version"] = 99
    items[0] = (items[0][0], json.dumps(manifest, sort_keys=True, indent=2).encode() + b"\n")
    bad = repack(tmp_path / "edited.edgebundle", items)
    with pytest.raises(SignatureError, match="altered after signing"):
        verify_bundle(bad, trust, unpack_to=target)
    assert_nothing_written(target)


def test_wrong_key_is_untrusted(int8_bundle, tmp_path, target):
    _, other_pub = generate_keypair(tmp_path / "other")
    with pytest.raises(SignatureError, match="not trusted"):
        verify_bundle(int8_bundle, TrustStore.from_paths([other_pub]), unpack_to=target)
    assert_nothing_written(target)


def test_stripped_signature(int8_bundle, trust, tmp_path, target):
    items = [(i, d) for i, d in members(int8_bundle) if i.name != "signature.json"]
    bad = repack(tmp_path / "unsigned.edgebundle", items)
    with pytest.raises(SignatureError, match="not signed"):
        verify_bundle(bad, trust, unpack_to=target)
    assert_nothing_written(target)


@pytest.mark.parametrize("keep", [0.3, 0.7, 0.995])
def test_truncated_archive(int8_bundle, trust, tmp_path, target, keep):
    data = int8_bundle.read_bytes()
    bad = tmp_path / "truncated.edgebundle"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises((CorruptBundle, HashMismatch)):
        verify_bundle(bad, trust, unpack_to=target)
    assert_nothing_written(target)


def test_garbage_file_is_not_a_bundle(trust, tmp_path, target):
    bad = tmp_path / "garbage.edgebundle"
    bad.write_bytes(b"\x89PNG not a tar at all" * 100)
    with pytest.raises(CorruptBundle):
        verify_bundle(bad, trust, unpack_to=target)


@pytest.mark.parametrize(
    "member",
    [
        extra_member("../escape.txt"),
        extra_member("model/../../escape.txt"),
        extra_member("/tmp/edgekit-absolute-escape.txt"),
        extra_member("model/link", b"", tarfile.SYMTYPE, "/etc/passwd"),
        extra_member("model/hard", b"", tarfile.LNKTYPE, "manifest.json"),
        extra_member("model/dev", b"", tarfile.CHRTYPE),
        extra_member("model/fifo", b"", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "symlink", "hardlink", "device", "fifo"],
)
def test_unsafe_members_refused(int8_bundle, trust, tmp_path, target, member):
    bad = repack(tmp_path / "unsafe.edgebundle", [*members(int8_bundle), member])
    with pytest.raises(UnsafeMember):
        verify_bundle(bad, trust, unpack_to=target)
    assert_nothing_written(target)
    assert not (tmp_path / "escape.txt").exists()
    assert not Path("/tmp/edgekit-absolute-escape.txt").exists()


def test_member_over_size_limit(int8_bundle, trust, target):
    with pytest.raises(UnsafeMember, match="over the limit"):
        verify_bundle(int8_bundle, trust, unpack_to=target, max_member_bytes=1000)
    assert_nothing_written(target)


def test_unlisted_member_refused(int8_bundle, trust, tmp_path, target):
    bad = repack(tmp_path / "extra.edgebundle", [*members(int8_bundle), extra_member("model/extra.bin", b"payload")])
    with pytest.raises(HashMismatch, match="not listed"):
        verify_bundle(bad, trust, unpack_to=target)
    assert_nothing_written(target)


def test_wrong_profile_refused_unless_overridden(int8_bundle, trust, target):
    with pytest.raises(ProfileMismatch, match="raspberry-pi-4"):
        verify_bundle(int8_bundle, trust, profile="jetson-nano", unpack_to=target)
    assert_nothing_written(target)
    vb = verify_bundle(int8_bundle, trust, profile="jetson-nano", allow_profile_mismatch=True)
    assert vb.manifest.profile == "raspberry-pi-4"


def test_unknown_schema_major_refused(int8_bundle, digits, trust, tmp_path, target):
    items = members(int8_bundle)
    manifest = json.loads(items[0][1])
    manifest["schema_version"] = "2.0"
    manifest_bytes = json.dumps(manifest, sort_keys=True, indent=2).encode() + b"\n"
    signature = sign_manifest(manifest_bytes, load_private_key(digits.key))  # validly signed, newer schema
    items[0] = (items[0][0], manifest_bytes)
    items[1] = (items[1][0], signature)
    bad = repack(tmp_path / "schema2.edgebundle", items)
    with pytest.raises(UnsupportedSchema, match="not supported"):
        verify_bundle(bad, trust, unpack_to=target)
    assert_nothing_written(target)


def test_manifest_round_trip_is_canonical(int8_bundle):
    manifest_bytes = members(int8_bundle)[0][1]
    assert Manifest.from_json(manifest_bytes).to_json() == manifest_bytes


@pytest.mark.parametrize(
    "make, code, words",
    [
        (lambda b, t: (t.write_bytes(b.read_bytes()[:3000]), t)[1], 11, "truncated"),
        (lambda b, t: repack(t, [*members(b), extra_member("../x")]), 12, "unsafe"),
        (lambda b, t: repack(t, [(i, d) for i, d in members(b) if i.name != "signature.json"]), 13, "not signed"),
    ],
    ids=["truncated", "traversal", "unsigned"],
)
def test_cli_exit_codes_and_one_line_messages(int8_bundle, digits, tmp_path, capsys, make, code, words):
    bad = make(int8_bundle, tmp_path / "bad.edgebundle")
    rc = agent_main(["verify", str(bad), "--trust", str(digits.pub)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code
    assert len(err) == 1 and err[0].startswith("edge-agent: error:") and words in err[0]


def test_cli_wrong_profile_exit_code(int8_bundle, digits, capsys):
    rc = agent_main(["verify", str(int8_bundle), "--trust", str(digits.pub), "--profile", "jetson-nano"])
    assert rc == 17
    assert "built for profile 'raspberry-pi-4'" in capsys.readouterr().err


def test_cli_requires_trust(int8_bundle, tmp_path, capsys):
    rc = agent_main(["--home", str(tmp_path / "home"), "verify", str(int8_bundle)])
    assert rc == 13
    assert "no trusted keys" in capsys.readouterr().err
