"""Dashboard sessions: a login form trades an API key for a signed cookie; forms carry a
token bound to the session.

Why a cookie and not the key: a browser cannot add ``Authorization: Bearer`` to a page it
navigates to, and a key in a URL ends up in histories, proxies and logs. The key is posted
once (a password field, never echoed), checked against the keyring, and the answer sets

    __Host-jobpool-session = v1.<fingerprint>.<expiry>.<nonce>.<HMAC-SHA256>

``HttpOnly`` (no script reads it), ``Secure`` and ``__Host-`` (https only, this host only,
path /; browsers count http://localhost and 127.0.0.1 as secure), ``SameSite=Strict`` (no
other site's page or link sends it). The fingerprint names the key's entry, never the key:
each request finds the entry again, so removing a key from the keyring ends its sessions
within the keys file's 2 s check, and a change of role applies at once. The cookie is
signed with a secret of the host (a file made once in ``JOBPOOL_STATE_DIR``) or of the
fleet (kept in its Redis), so every worker, and every host of a fleet, accepts it.

Forms that change something (cancel, retry, log out) carry a token, an HMAC of the
session's nonce, and every POST must come from a page of this origin (``Origin`` /
``Sec-Fetch-Site``): a cross-site form post fails both checks.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import falcon.asgi

from service.errors import Forbidden, Unauthorized
from service.hostfiles import made_once
from service.keys import KeyEntry, Keyring, Role

__all__ = ["COOKIE", "LoginRequired", "Sessions", "Visitor", "local_secret"]

COOKIE = "__Host-jobpool-session"
VERSION = "v1"
SECRET_FILE = "ui-secret"  # noqa: S105 - the file's name, not a secret
#: Random bytes of the signing secret and of a session's nonce.
SECRET_BYTES = 32
NONCE_BYTES = 12
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
#: Longest cookie value looked at (a real one has ~120 characters).
COOKIE_MAX = 256


class LoginRequired(Unauthorized):
    """A dashboard page without a valid session: the browser is sent to the login form."""

    title = "Login required"


@dataclass(frozen=True)
class Visitor:
    """Who looks at a page: the client (owner of jobs), the role, and the token its forms
    carry."""

    client: str
    role: Role
    csrf: str

    @property
    def is_operator(self) -> bool:
        return self.role == "operator"


def local_secret(directory: Path) -> bytes:
    """The host's signing secret: made once (random), kept in ``directory``, read by every
    worker (:func:`~service.hostfiles.made_once`: concurrent first starts agree)."""
    text = made_once(directory / SECRET_FILE, lambda: secrets.token_hex(SECRET_BYTES))
    return bytes.fromhex(text)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Sessions:
    """Issue and check session cookies and form tokens for the pages under ``prefix``.

    ``keyring`` None (``JOBPOOL_AUTH=off``): no login; every visitor is ``anonymous``, an
    operator, as every API request then is.
    """

    def __init__(
        self,
        keyring: Keyring | None,
        secret: Callable[[], Awaitable[bytes]],
        *,
        lifetime_s: int,
        prefix: str,
        open_paths: frozenset[str],
        anonymous: tuple[str, Role],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self._secret = secret
        self.lifetime_s = lifetime_s
        self.prefix = prefix
        self.open_paths = open_paths
        self.anonymous = anonymous
        self.clock = clock

    # -- the PageAuth of the security middleware --------------------------------------

    def covers(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")

    async def identify(self, req: falcon.asgi.Request) -> tuple[str, Role] | None:
        if req.path in self.open_paths or req.path.startswith(self.prefix + "/static/"):
            return None
        visitor = await self.visitor(req)
        if visitor is None:
            raise LoginRequired("log in with your API key")
        req.context.visitor = visitor
        return visitor.client, visitor.role

    # -- cookies ------------------------------------------------------------------------

    async def visitor(self, req: falcon.asgi.Request) -> Visitor | None:
        """The visitor of the request's session cookie; None without a valid one."""
        secret = await self._secret()
        if self.keyring is None:
            client, role = self.anonymous
            return Visitor(client, role, self._csrf(secret, "anonymous"))
        for value in req.get_cookie_values(COOKIE) or ():
            entry_nonce = self._check(secret, value)
            if entry_nonce is not None:
                entry, nonce = entry_nonce
                return Visitor(entry.client, entry.role, self._csrf(secret, nonce))
        return None

    def _check(self, secret: bytes, value: str) -> tuple[KeyEntry, str] | None:
        assert self.keyring is not None
        if len(value) > COOKIE_MAX:
            return None
        body, _, signature = value.rpartition(".")
        if not hmac.compare_digest(signature, self._sign(secret, body)):
            return None
        parts = body.split(".")
        if len(parts) != 4 or parts[0] != VERSION:
            return None
        _, fingerprint, expiry, nonce = parts
        if not expiry.isdigit() or int(expiry) <= self.clock():
            return None
        try:
            entry = self.keyring.by_fingerprint(bytes.fromhex(fingerprint))
        except ValueError:
            return None
        return None if entry is None else (entry, nonce)

    async def login(self, key: str) -> tuple[Visitor, str]:
        """Check ``key`` (raises Unauthorized); the visitor and its cookie's value."""
        if self.keyring is None:
            raise Unauthorized("the service runs without keys (JOBPOOL_AUTH=off)")
        entry = self.keyring.find(key.strip())
        secret = await self._secret()
        nonce = _b64(secrets.token_bytes(NONCE_BYTES))
        expiry = int(self.clock()) + self.lifetime_s
        body = f"{VERSION}.{entry.fingerprint.hex()}.{expiry}.{nonce}"
        visitor = Visitor(entry.client, entry.role, self._csrf(secret, nonce))
        return visitor, f"{body}.{self._sign(secret, body)}"

    def set_cookie(self, resp: falcon.asgi.Response, value: str) -> None:
        resp.set_cookie(
            COOKIE, value, max_age=self.lifetime_s, path="/", secure=True, http_only=True,
            same_site="Strict",
        )  # fmt: skip

    def clear_cookie(self, resp: falcon.asgi.Response) -> None:
        # Not unset_cookie: a browser drops a __Host- cookie only by one that is Secure too.
        resp.set_cookie(
            COOKIE, "", expires=EPOCH, path="/", secure=True, http_only=True, same_site="Strict"
        )

    @staticmethod
    def _sign(secret: bytes, body: str) -> str:
        return _b64(hmac.new(secret, b"session|" + body.encode(), hashlib.sha256).digest())

    @staticmethod
    def _csrf(secret: bytes, nonce: str) -> str:
        return _b64(hmac.new(secret, b"form|" + nonce.encode(), hashlib.sha256).digest()[:18])

    # -- forms --------------------------------------------------------------------------

    def check_form(self, req: falcon.asgi.Request, token: str | None, visitor: Visitor) -> None:
        """A form post of ``visitor``: from this origin, with its session's token."""
        self.check_origin(req)
        if not token or not hmac.compare_digest(token, visitor.csrf):
            raise Forbidden("the form is stale or was not sent from this dashboard; reload it")

    @staticmethod
    def check_origin(req: falcon.asgi.Request) -> None:
        """Refuse a post that another site's page made: Fetch Metadata when the browser
        sends it, else ``Origin``; a browser that sends neither has the token and the
        SameSite cookie to stop it."""
        site = req.get_header("Sec-Fetch-Site")
        origin = req.get_header("Origin")
        if site is not None:
            ok = site == "same-origin"
        elif origin is not None:
            ok = urllib.parse.urlsplit(origin).netloc == (req.get_header("Host") or "")
        else:
            ok = True
        if not ok:
            raise Forbidden("this form can only be sent from the dashboard itself")
