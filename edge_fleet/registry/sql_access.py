"""The SQL engines' API tokens and audit log (a mixin of SqlRegistry, which owns the connection).

Tokens are stored as the SHA-256 of the secret: a token is 32 random bytes, so a fast hash is
enough (a slow password hash guards against guessing low-entropy passwords, which these are not).
"""

from __future__ import annotations

import json
import time
import sqlite3
from typing import Any, Callable

from ..errors import TokenExists
from .records import AuditEntry, Page, TokenRecord


class SqlAccess:
    """Tokens and audit rows; relies on SqlRegistry's _query and _execute."""

    _query: Callable[..., list[Any]]
    _execute: Callable[..., Any]
    #: what the driver raises for a UNIQUE violation
    _INTEGRITY_ERROR: type[Exception] = sqlite3.IntegrityError

    def add_token(self, rec: TokenRecord) -> None:
        """Store a new token; a revoked token's name is taken again (rotation: revoke ci, create ci), a live one's
        is refused. The audit log keeps both tokens' entries under the name, in order."""
        reused = self._execute("UPDATE api_tokens SET role=?, token_hash=?, created_at=?, created_by=?, "
                               "last_used_at=?, revoked_at=? WHERE name=? AND revoked_at IS NOT NULL",
                               (rec.role, rec.token_hash, rec.created_at, rec.created_by, rec.last_used_at,
                                rec.revoked_at, rec.name))
        if reused.rowcount:
            return
        try:
            self._execute("INSERT INTO api_tokens VALUES (?,?,?,?,?,?,?)",
                          (rec.name, rec.role, rec.token_hash, rec.created_at, rec.created_by, rec.last_used_at,
                           rec.revoked_at))
        except self._INTEGRITY_ERROR as exc:
            raise TokenExists(f"a live token named {rec.name!r} already exists (revoke it first, or choose another "
                              "name)") from exc

    def token_by_hash(self, token_hash: str) -> TokenRecord | None:
        rows = self._query("SELECT * FROM api_tokens WHERE token_hash=?", (token_hash,))
        return TokenRecord(**dict(rows[0])) if rows else None

    def tokens(self) -> list[TokenRecord]:
        return [TokenRecord(**dict(r)) for r in self._query("SELECT * FROM api_tokens ORDER BY name")]

    def revoke_token(self, name: str, now: float) -> bool:
        cur = self._execute("UPDATE api_tokens SET revoked_at=? WHERE name=? AND revoked_at IS NULL", (now, name))
        return cur.rowcount > 0

    def touch_token(self, name: str, now: float) -> None:
        self._execute("UPDATE api_tokens SET last_used_at=? WHERE name=?", (now, name))

    def add_audit(self, actor: str, role: str | None, action: str, target: str | None, detail: dict[str, Any],
                  outcome: str, now: float | None = None) -> None:
        self._execute("INSERT INTO audit_log (at, actor, role, action, target, detail, outcome) VALUES (?,?,?,?,?,?,?)",
                      (time.time() if now is None else now, actor, role, action, target,
                       json.dumps(detail, default=str), outcome))

    def audit_page(self, limit: int, offset: int, actor: str | None = None,
                   action: str | None = None) -> Page[AuditEntry]:
        conds, params = [], []
        for column, value in (("actor", actor), ("action", action)):
            if value is not None:
                conds.append(f"{column}=?")
                params.append(value)
        clause = ("WHERE " + " AND ".join(conds)) if conds else ""
        total = self._query(f"SELECT COUNT(*) FROM audit_log {clause}", params)[0][0]
        rows = self._query(f"SELECT * FROM audit_log {clause} ORDER BY id DESC LIMIT ? OFFSET ?",
                           (*params, limit, offset))
        return Page([AuditEntry(**{**dict(r), "detail": json.loads(r["detail"] or "{}")}) for r in rows],
                    total, limit, offset)
