"""Outbound URL guard: parse a user's URL, resolve its host once, refuse internal addresses.

This is what keeps user-supplied URLs (``POST /v1/fetch``) away from the instance metadata
service (169.254.169.254, fd00:ec2::254), from loopback, and from the private network the
service runs in (SSRF). The rules:

* Only ``http`` and ``https``; no userinfo (``user:pass@``); a port in 1-65535; a host.
  These hold whatever ``allow_private`` says.
* A host written as an IPv4 address in any spelling the C resolver accepts (``2130706433``,
  ``0x7f000001``, ``0177.0.0.1``, ``127.1``), an IPv6 literal (``[::ffff:127.0.0.1]``), an
  internationalised or full-width spelling, upper case, or a trailing dot is parsed here into
  one address, so what is checked is what is connected to.
* A name is resolved once (``getaddrinfo``); every returned address must pass
  :func:`check_ip`; the caller then connects to one of these checked addresses, never to the
  name, so a second lookup (DNS rebinding) cannot change where the connection goes.
* Some names are refused without any lookup: ``localhost`` and ``*.localhost``,
  ``*.internal`` (e.g. ``metadata.google.internal``, ``*.ec2.internal``), ``*.local``,
  ``*.home.arpa``, and single-label names (``instance-data``) which the resolver completes
  with the host's search domain.
* ``allow_private=True`` lifts the address and name rules (tests, private deployments);
  ``allowed_addresses`` lifts them for exact addresses only (a test server's address).

:func:`precheck` applies everything that can be decided without DNS, for the HTTP layer to
answer 422 at submit time; :func:`resolve_checked` does the lookup and checks the answers.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TypeAlias
from urllib.parse import quote, urlsplit

__all__ = [
    "DEFAULT_MAX_URL_LENGTH",
    "BadURL",
    "BlockedAddress",
    "IPAddress",
    "ParsedURL",
    "Resolver",
    "check_ip",
    "check_name",
    "parse_url",
    "precheck",
    "resolve_checked",
]

IPAddress: TypeAlias = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_MAX_URL_LENGTH: Final = 2048
_SCHEMES: Final = {"http": 80, "https": 443}
_NO_ADDRESSES: Final[frozenset[IPAddress]] = frozenset()


class BadURL(ValueError):
    """The URL is malformed or uses something never allowed (scheme, userinfo, port)."""


class BlockedAddress(ValueError):
    """The URL's host is, or resolves to, an address (or a name) the guard refuses.

    ``address`` is the refused address or name as text, ``reason`` the rule it broke
    (e.g. ``"link-local (cloud metadata)"``); the message says both.
    """

    def __init__(self, message: str, *, address: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.address = address
        self.reason = reason


class Resolver(Protocol):
    """What :func:`socket.getaddrinfo` looks like to this module (positional arguments)."""

    def __call__(
        self, host: str, port: int, family: int, type: int, proto: int, /
    ) -> Sequence[tuple[Any, Any, Any, Any, tuple[Any, ...]]]: ...


# --------------------------------------------------------------------------- addresses

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

# First match wins, so specific entries come before the ranges that contain them.
_V4_RULES: Final[tuple[tuple[ipaddress.IPv4Network, str], ...]] = (
    (_V4("169.254.169.254/32"), "link-local (cloud metadata)"),
    (_V4("169.254.170.2/32"), "link-local (container metadata)"),
    (_V4("169.254.0.0/16"), "link-local"),
    (_V4("0.0.0.0/32"), "unspecified"),
    (_V4("0.0.0.0/8"), "reserved ('this network')"),
    (_V4("127.0.0.0/8"), "loopback"),
    (_V4("10.0.0.0/8"), "private (RFC 1918)"),
    (_V4("172.16.0.0/12"), "private (RFC 1918)"),
    (_V4("192.168.0.0/16"), "private (RFC 1918)"),
    (_V4("100.64.0.0/10"), "private (CGNAT shared address space)"),
    (_V4("192.0.0.0/24"), "reserved (IETF protocol assignments)"),
    (_V4("192.0.2.0/24"), "documentation (TEST-NET-1)"),
    (_V4("198.51.100.0/24"), "documentation (TEST-NET-2)"),
    (_V4("203.0.113.0/24"), "documentation (TEST-NET-3)"),
    (_V4("198.18.0.0/15"), "benchmarking"),
    (_V4("192.88.99.0/24"), "reserved (6to4 relay anycast)"),
    (_V4("224.0.0.0/4"), "multicast"),
    (_V4("255.255.255.255/32"), "broadcast"),
    (_V4("240.0.0.0/4"), "reserved"),
)

_V6_RULES: Final[tuple[tuple[ipaddress.IPv6Network, str], ...]] = (
    (_V6("::/128"), "unspecified"),
    (_V6("::1/128"), "loopback"),
    (_V6("::ffff:0:0:0/96"), "reserved (IPv4-translated)"),
    (_V6("::/96"), "reserved (IPv4-compatible, deprecated)"),
    (_V6("fd00:ec2::254/128"), "unique-local (cloud metadata)"),
    (_V6("fc00::/7"), "private (unique-local)"),
    (_V6("fe80::/10"), "link-local"),
    (_V6("fec0::/10"), "site-local (deprecated)"),
    (_V6("ff00::/8"), "multicast"),
    (_V6("64:ff9b:1::/48"), "private (local-use NAT64)"),
    (_V6("100::/64"), "reserved (discard-only)"),
    (_V6("2001:2::/48"), "benchmarking"),
    (_V6("2001::/23"), "reserved (IETF protocol assignments)"),
    (_V6("2001:db8::/32"), "documentation"),
    (_V6("3fff::/20"), "documentation"),
)

_V4_MAPPED: Final = _V6("::ffff:0:0/96")
_NAT64: Final = _V6("64:ff9b::/96")
_SIX_TO_FOUR: Final = _V6("2002::/16")
_TEREDO: Final = _V6("2001::/32")
_GLOBAL_UNICAST: Final = _V6("2000::/3")


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[str, tuple[ipaddress.IPv4Address, ...]]:
    """The IPv4 addresses an IPv6 address carries, and the name of the form, if any."""
    if ip in _V4_MAPPED:
        return "IPv4-mapped", (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip in _NAT64:
        return "NAT64", (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF),)
    if ip in _SIX_TO_FOUR:
        return "6to4", (ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF),)
    if ip in _TEREDO:
        server = ipaddress.IPv4Address((int(ip) >> 64) & 0xFFFFFFFF)
        client = ipaddress.IPv4Address(~int(ip) & 0xFFFFFFFF)
        return "Teredo", (server, client)
    return "", ()


def check_ip(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be connected to (e.g. ``"loopback"``), or None if it may be.

    IPv4: loopback, RFC 1918, CGNAT, link-local (and the metadata addresses by name),
    unspecified/'this network', multicast, broadcast, reserved, documentation and
    benchmarking ranges. IPv6: the same kinds, unique-local (fd00:ec2::254 by name), anything
    outside global unicast 2000::/3, and the IPv4-mapped, NAT64, 6to4 and Teredo forms whose
    embedded IPv4 address is refused.
    """
    if isinstance(ip, ipaddress.IPv4Address):
        for net4, reason in _V4_RULES:
            if ip in net4:
                return reason
        if not ip.is_global:  # a safety net: the table above should already cover these
            return "reserved (not globally routable)"
        return None
    form, inner = _embedded_v4(ip)
    for v4 in inner:
        inner_reason = check_ip(v4)
        if inner_reason is not None:
            return f"{form} with embedded {v4}, which is {inner_reason}"
    if form:
        return None
    for net6, reason in _V6_RULES:
        if ip in net6:
            return reason
    if ip not in _GLOBAL_UNICAST:
        return "reserved (outside global unicast 2000::/3)"
    return None


def _unmap(ip: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` as the IPv4 address it stands for; any other address unchanged."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _refuse_ip(ip: IPAddress, allowed: frozenset[IPAddress], *, host: str = "") -> None:
    if ip in allowed or _unmap(ip) in allowed:
        return
    reason = check_ip(ip)
    if reason is None:
        return
    prefix = f"{host} resolves to {ip}: " if host else ""
    raise BlockedAddress(f"{prefix}{ip} is {reason}", address=str(ip), reason=reason)


# --------------------------------------------------------------------------- names

_NUMERIC_LABEL: Final = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)\Z")
_NAME_LABEL: Final = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")
_PART_RE: Final = {
    16: re.compile(r"[0-9a-f]+\Z"),
    8: re.compile(r"[0-7]+\Z"),
    10: re.compile(r"[0-9]+\Z"),
}


def _parse_ipv4_number(host: str) -> ipaddress.IPv4Address | None:
    """``host`` read the way the C library's ``inet_aton`` reads it, or None if it can't be.

    One to four dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last
    part fills the remaining bytes: ``127.1`` is 127.0.0.1, ``2130706433`` too.
    """
    parts = host.lower().split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if part.startswith("0x"):
            base, digits = 16, part[2:]
        elif len(part) > 1 and part.startswith("0"):
            base, digits = 8, part[1:]
        else:
            base, digits = 10, part
        if not _PART_RE[base].match(digits):
            return None
        values.append(int(digits, base))
    *head, last = values
    if any(v > 0xFF for v in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    number = last
    for i, v in enumerate(head):
        number |= v << (8 * (3 - i))
    return ipaddress.IPv4Address(number)


def _parse_host(raw: str) -> tuple[str, IPAddress | None]:
    """Normalise a URL host: (lower-case ASCII name or canonical address text, address).

    Accepts ``[v6]``, IPv4 in any inet_aton spelling, internationalised names (IDNA 2003,
    which also folds full-width letters, digits and dots), a single trailing dot.
    """
    if raw.startswith("[") or ":" in raw:
        if raw.startswith("[") != raw.endswith("]"):
            raise BadURL(f"malformed host {raw!r}")
        inner = raw[1:-1] if raw.startswith("[") else raw
        if "%" in inner:
            raise BadURL(f"IPv6 zone identifiers are not allowed: {raw!r}")
        try:
            v6 = ipaddress.IPv6Address(inner)
        except ValueError:
            raise BadURL(f"malformed IPv6 address {raw!r}") from None
        return str(v6), v6
    if not raw:
        raise BadURL("URL has no host")
    if "%" in raw:
        raise BadURL(f"percent-encoded host names are not allowed: {raw!r}")
    host = raw
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadURL(f"host {raw!r} is not a valid internationalised name") from exc
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    labels = host.split(".")
    if not host or "" in labels:
        raise BadURL(f"malformed host {raw!r}")
    if _NUMERIC_LABEL.match(labels[-1]):
        v4 = _parse_ipv4_number(host)
        if v4 is None:
            raise BadURL(f"host {raw!r} looks like an IPv4 address but is not a valid one")
        return str(v4), v4
    if len(host) > 253 or not all(_NAME_LABEL.match(label) for label in labels):
        raise BadURL(f"malformed host name {raw!r}")
    return host, None


_LOCAL_SUFFIXES: Final = (
    ("localhost", "a loopback name"),
    ("internal", "an internal name"),
    ("local", "a link-local (mDNS) name"),
    ("home.arpa", "a home-network name"),
)


def check_name(host: str) -> str | None:
    """Why a (normalised) host name is refused without resolving it, or None.

    ``localhost``, ``*.localhost``, ``*.internal``, ``*.local``, ``*.home.arpa``, and any
    single-label name (the resolver would complete it with the host's search domain, e.g.
    ``instance-data`` -> ``instance-data.ec2.internal`` -> 169.254.169.254).
    """
    for suffix, reason in _LOCAL_SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return reason
    if "." not in host:
        return "a single-label name (completed by the local search domain)"
    return None


# --------------------------------------------------------------------------- URLs


@dataclass(frozen=True, slots=True)
class ParsedURL:
    """An absolute http(s) URL, normalised.

    ``host`` is the lower-case ASCII name without a trailing dot, or the canonical text of
    the address (``127.0.0.1``, ``::1`` without brackets) when the URL names one, in which
    case ``ip`` holds it. ``target`` is the path and query to send, starting with ``/``;
    any fragment is dropped.
    """

    scheme: str
    host: str
    port: int
    target: str
    ip: IPAddress | None = None

    @property
    def authority(self) -> str:
        """``host[:port]`` as sent in the Host header (port omitted when it is the default)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == _SCHEMES[self.scheme] else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The normalised URL as text."""
        return f"{self.scheme}://{self.authority}{self.target}"


_FORBIDDEN_CHARS: Final = re.compile(r"[\x00-\x20\x7f\\]")


def parse_url(url: str, *, max_length: int = DEFAULT_MAX_URL_LENGTH) -> ParsedURL:
    """Parse and normalise an absolute http(s) URL, or raise :class:`BadURL`.

    Refused: more than ``max_length`` characters; whitespace, control characters or
    backslashes anywhere; a scheme other than http/https; userinfo; an empty or malformed
    host; a port outside 1-65535. Non-ASCII in the path or query is percent-encoded.
    """
    if not isinstance(url, str):
        raise BadURL("URL must be a string")
    if len(url) > max_length:
        raise BadURL(f"URL is longer than {max_length} characters")
    bad = _FORBIDDEN_CHARS.search(url)
    if bad:
        raise BadURL(f"URL contains a forbidden character {bad.group()!r}")
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise BadURL(f"malformed URL: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise BadURL("URL must be absolute (http:// or https://)")
    if scheme not in _SCHEMES:
        raise BadURL(f"scheme {scheme!r} is not allowed; only http and https are")
    netloc = parts.netloc
    if "@" in netloc:
        raise BadURL("URLs with credentials (user:password@) are not allowed")
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise BadURL(f"malformed host {netloc!r}")
        raw_host, rest = netloc[: end + 1], netloc[end + 1 :]
        if rest and not rest.startswith(":"):
            raise BadURL(f"malformed host {netloc!r}")
        port_text = rest[1:] if rest else ""
    else:
        raw_host, colon, port_text = netloc.partition(":")
        if colon and ":" in port_text:
            raise BadURL(f"malformed host {netloc!r}: an IPv6 address goes in brackets")
    port = _parse_port(port_text, default=_SCHEMES[scheme])
    host, ip = _parse_host(raw_host)
    path = quote(parts.path or "/", safe="/:@!$&'()*+,;=%~")
    if not path.startswith("/"):
        raise BadURL("malformed path")
    query = quote(parts.query, safe="/?:@!$&'()*+,;=%~")
    target = f"{path}?{query}" if query else path
    return ParsedURL(scheme=scheme, host=host, port=port, target=target, ip=ip)


def _parse_port(text: str, *, default: int) -> int:
    if not text:
        return default
    if not (text.isascii() and text.isdigit()) or len(text.lstrip("0")) > 5:
        raise BadURL(f"port {text!r} is not a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise BadURL(f"port {port} is outside 1-65535")
    return port


def precheck(
    url: str,
    *,
    allow_private: bool,
    max_length: int = DEFAULT_MAX_URL_LENGTH,
    allowed_addresses: Iterable[IPAddress] = _NO_ADDRESSES,
) -> None:
    """Refuse at submit time what can be decided without DNS; return None if it may pass.

    Raises :class:`BadURL` (malformed, scheme, userinfo, port, length: never lifted) or
    :class:`BlockedAddress` (a literal address in any spelling that :func:`check_ip`
    refuses, or a name :func:`check_name` refuses; lifted by ``allow_private`` and, for
    exact addresses, by ``allowed_addresses``). A URL that passes may still be refused
    later, when its name resolves to a refused address.
    """
    parsed = parse_url(url, max_length=max_length)
    if allow_private:
        return
    if parsed.ip is not None:
        _refuse_ip(parsed.ip, frozenset(allowed_addresses))
        return
    reason = check_name(parsed.host)
    if reason is not None:
        raise BlockedAddress(f"{parsed.host} is {reason}", address=parsed.host, reason=reason)


def resolve_checked(
    host: str,
    port: int,
    *,
    allow_private: bool,
    resolver: Resolver = socket.getaddrinfo,
    allowed_addresses: Iterable[IPAddress] = _NO_ADDRESSES,
) -> list[IPAddress]:
    """Resolve ``host`` once and return its addresses, all checked, in resolver order.

    ``host`` may be a name or an address in any spelling :func:`parse_url` accepts (an
    address is returned as is, without a lookup). IPv4-mapped IPv6 answers come back as
    IPv4. Raises :class:`BlockedAddress` if the name is refused or if ANY answer is refused
    (unless ``allow_private``, or the answer is in ``allowed_addresses``), :class:`BadURL` for
    a malformed host, and :class:`socket.gaierror` when the name does not resolve.
    Connect only to the returned addresses, never to the name again.
    """
    allowed = frozenset(allowed_addresses)
    name, literal = _parse_host(host)
    if literal is not None:
        if not allow_private:
            _refuse_ip(literal, allowed)
        return [_unmap(literal)]
    if not allow_private:
        reason = check_name(name)
        if reason is not None:
            raise BlockedAddress(f"{name} is {reason}", address=name, reason=reason)
    infos = resolver(name, port, 0, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    found: list[IPAddress] = []
    for info in infos:
        family, sockaddr = info[0], info[4]
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        text = str(sockaddr[0]).split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            raise BlockedAddress(
                f"{name} resolves to an unreadable address {text!r}",
                address=text,
                reason="unreadable address",
            ) from None
        if not allow_private:
            _refuse_ip(ip, allowed, host=name)
        ip = _unmap(ip)
        if ip not in found:
            found.append(ip)
    if not found:
        raise socket.gaierror(socket.EAI_NONAME, f"{name} has no IPv4 or IPv6 address")
    return found
