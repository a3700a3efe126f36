"""The token rule: with `--token`, every request carries it (Bearer header or the login cookie)."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import Request

COOKIE = "mvh_token"
# Reachable without the token: the login form and the stylesheet it uses.
OPEN_PATHS = frozenset({"/login", "/static/style.css"})


def cookie_value(token: str) -> str:
    """What the login cookie holds: a digest of the token, not the token itself."""
    return hashlib.sha256(("mvh-serve:" + token).encode()).hexdigest()


def token_ok(given: str, token: str) -> bool:
    """Constant-time comparison of a given token with the configured one."""
    return hmac.compare_digest(given.encode(), token.encode())


def authorized(request: Request, token: str) -> bool:
    """True when the request carries `Authorization: Bearer TOKEN` or the login cookie."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value and token_ok(value.strip(), token):
        return True
    cookie = request.cookies.get(COOKIE, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), cookie_value(token).encode())
