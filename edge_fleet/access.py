"""Who may do what: API token roles, token secrets stored only as hashes, and the acting identity.

Roles are ordered: a viewer reads; an operator also deploys, halts, resumes, rolls back and
groups devices; an admin also publishes bundles and manages tokens. The CLI on the server's own
shell acts as `local:USER` with the admin role (it can open the registry file anyway).
"""

from __future__ import annotations

import getpass
import hashlib
import re
import secrets
import time
from dataclasses import dataclass

from .errors import FleetUsageError, NotFound
from .registry import Registry
from .registry.records import TokenRecord

ROLES = ("viewer", "operator", "admin")
TOKEN_PREFIX = "efk_"  # makes a leaked token easy to recognise (and to grep for in logs)
TOUCH_EVERY = 60.0  # seconds between updates of a token's last_used_at
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


@dataclass(frozen=True)
class Actor:
    """Who is acting: a token's name (or local:USER) and its role."""

    name: str
    role: str

    def may(self, needed: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(needed)


def local_actor() -> Actor:
    """The CLI working on the registry file directly: the server's own shell, trusted as admin."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return Actor(f"local:{user}", "admin")


def hash_token(secret: str) -> str:
    """SHA-256 of the secret. Tokens carry 256 random bits, so a fast hash is safe (no guessing)."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def authenticate(reg: Registry, secret: str | None, now: float | None = None) -> Actor | None:
    """The actor a bearer secret belongs to, or None (missing, unknown or revoked)."""
    if not secret:
        return None
    rec = reg.token_by_hash(hash_token(secret))
    if rec is None or rec.revoked_at is not None:
        return None
    now = time.time() if now is None else now
    if rec.last_used_at is None or now - rec.last_used_at > TOUCH_EVERY:
        reg.touch_token(rec.name, now)  # not on every request: each write would wake the live console
    return Actor(rec.name, rec.role)


def create_token(reg: Registry, actor: Actor, name: str, role: str) -> tuple[str, TokenRecord]:
    """A new token: (the secret, shown once, and the stored record without it)."""
    if not _NAME_RE.match(name or ""):
        raise FleetUsageError(f"token name must be 1-64 of [A-Za-z0-9._@-], got {name!r}")
    if role not in ROLES:
        raise FleetUsageError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    rec = TokenRecord(name=name, role=role, token_hash=hash_token(secret), created_at=time.time(),
                      created_by=actor.name)
    reg.add_token(rec)  # TokenExists (409, exit 69) when a live token has the name
    return secret, rec


def revoke_token(reg: Registry, name: str) -> None:
    if not reg.revoke_token(name, time.time()):
        raise NotFound(f"no live token named {name!r}")
