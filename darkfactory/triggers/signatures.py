"""Who may start a run over HTTP: webhook signatures and tokens, checked in constant time over the raw body.

GitHub signs the body with the webhook's secret (`X-Hub-Signature-256: sha256=<hex HMAC-SHA256>`); Sentry
signs it with the integration's client secret (`Sentry-Hook-Signature: <hex HMAC-SHA256>`); Alertmanager
sends a bearer token (`http_config.authorization.credentials`). The body is checked as received, before it
is parsed: re-serialised JSON would not match the signature.
"""

from __future__ import annotations

import hashlib
import hmac


def hmac_sha256_hex(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def github_signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """`X-Hub-Signature-256`, as GitHub documents it (`sha256=` then the hex digest)."""
    if not header or not header.startswith("sha256="):
        return False
    return hmac.compare_digest(header.removeprefix("sha256=").encode(), hmac_sha256_hex(secret, body).encode())


def sentry_signature_valid(secret: str, body: bytes, header: str | None) -> bool:
    """`Sentry-Hook-Signature`: the hex digest alone."""
    if not header:
        return False
    return hmac.compare_digest(header.strip().encode(), hmac_sha256_hex(secret, body).encode())


def bearer_valid(token: str, header: str | None) -> bool:
    """`Authorization: Bearer <token>`."""
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").strip().encode(), token.encode())
