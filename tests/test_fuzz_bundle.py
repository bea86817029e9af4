"""Property-based fuzzing (Hypothesis) of bundle verification, on real archives signed with a real key.

Whatever the archive holds (odd member names, clashes, sizes that disagree with the signed
manifest, flipped or cut bytes), `verify_bundle` either proves the bundle good and unpacks exactly
what the manifest lists, or raises a typed BundleError (so every CLI exits with its own code);
nothing is ever written outside the unpack folder, and a refused bundle leaves nothing behind.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edge_agent.bundle import BundleError, TrustStore, generate_keypair, load_private_key, read_manifest_unverified, verify_bundle

from .bundle_craft import craft_bundle

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                     HealthCheck.function_scoped_fixture])
SEGMENTS = st.sampled_from(["model.onnx", "model", "a", "..", ".", "", "x" * 60, "b.npz", "ü", "dir"])
names = st.lists(SEGMENTS, min_size=1, max_size=3).map("/".join) | st.sampled_from(
    ["/etc/passwd", "manifest.json", "signature.json", "a\\b", "./model.onnx"])


@pytest.fixture(scope="module")
def signer(int8_bundle, tmp_path_factory):
    keys = tmp_path_factory.mktemp("fuzz-keys")
    key, pub = generate_keypair(keys)
    return read_manifest_unverified(int8_bundle), load_private_key(key), TrustStore.from_paths([pub])


def _verify_in(folder: Path, bundle: Path, trust: TrustStore) -> dict[str, bytes] | None:
    """The unpacked files (None when refused with a BundleError); asserts nothing escaped the folder."""
    before = set(folder.parent.rglob("*"))
    target = folder / "unpacked"
    try:
        verify_bundle(bundle, trust, unpack_to=target)
    except BundleError:
        assert not target.exists()
        assert set(folder.parent.rglob("*")) == before  # nothing left behind, nothing written elsewhere
        return None
    written = set(folder.parent.rglob("*")) - before
    assert all(p.is_relative_to(target) for p in written)
    return {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*") if p.is_file()}


@FAST
@given(st.dictionaries(names, st.binary(max_size=64), min_size=1, max_size=4), st.data())
def test_any_members_verify_exactly_or_are_refused(signer, members, data):
    template, key, trust = signer
    listed = data.draw(st.sampled_from(["same", "fewer", "more"]))
    manifest_files = dict(members)
    if listed == "fewer" and len(members) > 1:
        manifest_files.pop(next(iter(members)))
    elif listed == "more":
        manifest_files["extra.bin"] = b"not in the archive"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        work.mkdir()
        try:
            bundle = craft_bundle(Path(tmp) / "b.edgebundle", template, key, members, listed=manifest_files)
        except (ValueError, tarfile.TarError, BundleError):
            assume(False)  # not even tarfile or the manifest can write it
        unpacked = _verify_in(work, bundle, trust)
    if unpacked is not None:
        assert unpacked == manifest_files == members


@FAST
@given(st.integers(0, 10_000), st.sampled_from(["flip", "cut", "insert"]), st.binary(min_size=1, max_size=16))
def test_damaged_bytes_never_pass_as_a_different_bundle(signer, position, how, junk):
    template, key, trust = signer
    members = {"model.onnx": b"weights" * 200, "labels.txt": b"0\n1\n"}
    with tempfile.TemporaryDirectory() as tmp:
        good = craft_bundle(Path(tmp) / "good.edgebundle", template, key, members)
        raw = good.read_bytes()
        position %= len(raw)
        if how == "flip":
            raw = raw[:position] + bytes(b ^ j for b, j in zip(raw[position:], junk)) + raw[position + len(junk):]
        elif how == "cut":
            raw = raw[:position]
        else:
            raw = raw[:position] + junk + raw[position:]
        bad = Path(tmp) / "bad.edgebundle"
        bad.write_bytes(raw)
        work = Path(tmp) / "work"
        work.mkdir()
        unpacked = _verify_in(work, bad, trust)
    assert unpacked in (None, members)  # refused, or damage only in padding: the same files
