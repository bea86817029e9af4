"""Ed25519 signing of manifests: key generation, key files, sign, verify against trusted keys."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SignatureError

ALGORITHM = "ed25519"
PRIVATE_KEY_NAME = "signing.key"
PUBLIC_KEY_NAME = "signing.pub"


def key_id(public_key: Ed25519PublicKey) -> str:
    """Short stable id of a public key: first 16 hex digits of SHA-256 of its raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: Path, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair as PEM files (private key mode 0600). Returns (key, pub)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = out_dir / PRIVATE_KEY_NAME, out_dir / PUBLIC_KEY_NAME
    if not overwrite and (priv_path.exists() or pub_path.exists()):
        raise FileExistsError(f"{priv_path} or {pub_path} already exists; pass --force to replace the key pair")
    key = Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub_pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    fd = os.open(priv_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv_pem)
    pub_path.write_bytes(pub_pem)
    return priv_path, pub_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key; raise SignatureError with the reason when unusable."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(f"cannot read signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"signing key {path} is not an Ed25519 key (create one with `edge-convert keygen`)")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    """Read a PEM Ed25519 public key."""
    try:
        pem = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read trusted key {path}: {exc}") from exc
    return public_key_from_pem(pem, str(path))


def public_key_from_pem(pem: bytes, source: str) -> Ed25519PublicKey:
    """A PEM Ed25519 public key; SignatureError naming `source` when it is not one."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SignatureError(f"cannot read trusted key {source}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"trusted key {source} is not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class TrustStore:
    """The public keys a device accepts bundles from, by key id."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def from_paths(cls, paths: list[Path] | tuple[Path, ...]) -> "TrustStore":
        """Load keys from PEM files and/or folders of `*.pub` files."""
        keys: dict[str, Ed25519PublicKey] = {}
        for p in map(Path, paths):
            files = sorted(p.glob("*.pub")) if p.is_dir() else [p]
            for f in files:
                k = load_public_key(f)
                keys[key_id(k)] = k
        return cls(keys)

    @classmethod
    def from_pem_text(cls, text: str, source: str) -> "TrustStore":
        """Keys from concatenated PEM public keys (a device's trusted/*.pub read over SSH, `source` naming it)."""
        end = "-----END PUBLIC KEY-----"
        blocks = [b + end for b in text.split(end) if b.strip()]
        keys = [public_key_from_pem(b.strip().encode(), source) for b in blocks]
        return cls({key_id(k): k for k in keys})

    def __bool__(self) -> bool:
        return bool(self.keys)


def sign_manifest(manifest_bytes: bytes, key: Ed25519PrivateKey) -> bytes:
    """The detached signature document (signature.json) for these exact manifest bytes."""
    doc = {
        "algorithm": ALGORITHM,
        "key_id": key_id(key.public_key()),
        "signature": base64.b64encode(key.sign(manifest_bytes)).decode("ascii"),
    }
    return (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode("ascii")


def verify_manifest_signature(manifest_bytes: bytes, signature_doc: bytes | None, trust: TrustStore) -> str:
    """Check the detached signature against the trusted keys; return the signer's key id."""
    if signature_doc is None:
        raise SignatureError("bundle is not signed (no signature.json): re-create it with `edge-convert convert --key ...`")
    if not trust:
        raise SignatureError("no trusted keys given: pass --trust PATH to the signer's public key")
    try:
        doc = json.loads(signature_doc)
        algorithm, kid, sig = doc["algorithm"], doc["key_id"], base64.b64decode(doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError) as exc:
        raise SignatureError(f"signature.json is malformed ({exc.__class__.__name__}): the bundle is damaged") from exc
    if not isinstance(algorithm, str) or not isinstance(kid, str):
        raise SignatureError("signature.json is malformed (algorithm and key_id must be strings): the bundle is damaged")
    if algorithm != ALGORITHM:
        raise SignatureError(f"signature algorithm {algorithm!r} is not supported (expected {ALGORITHM})")
    public = trust.keys.get(kid)
    if public is None:
        raise SignatureError(
            f"bundle is signed by key {kid}, which is not trusted here "
            f"(trusted: {', '.join(sorted(trust.keys)) or 'none'})"
        )
    try:
        public.verify(sig, manifest_bytes)
    except InvalidSignature:
        raise SignatureError(f"signature does not match the manifest (key {kid}): the bundle was altered after signing")
    return kid
