"""fetch_url against real local HTTP(S) servers: limits, redirects, and the SSRF guard.

Connections and lookups are observed with a Python audit hook (the interpreter's own
``socket.connect`` and ``socket.getaddrinfo`` events), so "refused before connecting" and
"no second DNS lookup" are checked on what really happened, not on a mock.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import pickle
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from service.netguard import BadURL, BlockedAddress
from service.tasks.fetch import FetchError, FetchLimits, fetch_url
from tests.test_netguard import SSRF_URLS
from tests.upstream import CertFiles, StaticResolver, UpstreamServer, make_test_certs

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")
LOCAL = FetchLimits(allow_private=True, connect_timeout_s=2, read_timeout_s=2, deadline_s=10)
GUARDED = FetchLimits(
    connect_timeout_s=2, read_timeout_s=2, deadline_s=10, allowed_addresses=frozenset({LOOPBACK})
)


def limits(base: FetchLimits = LOCAL, **changes: Any) -> FetchLimits:
    """``base`` with some fields changed."""
    fields = {name: getattr(base, name) for name in FetchLimits.__dataclass_fields__}
    return FetchLimits(**{**fields, **changes})


# --------------------------------------------------------------------------- observing the network


@dataclass
class NetLog:
    """Where this process connected and what it looked up while recording."""

    recording: bool = False
    connects: list[tuple[Any, ...]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)


_NETLOG = NetLog()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _NETLOG.recording:
        return
    if event == "socket.connect":
        _NETLOG.connects.append(tuple(args[1]))
    elif event == "socket.getaddrinfo":
        _NETLOG.lookups.append(str(args[0]))


sys.addaudithook(_audit)  # hooks cannot be removed: this one only records while asked to


@pytest.fixture
def netlog() -> Iterator[NetLog]:
    """Record socket connects and getaddrinfo calls made during the test."""
    _NETLOG.connects.clear()
    _NETLOG.lookups.clear()
    _NETLOG.recording = True
    try:
        yield _NETLOG
    finally:
        _NETLOG.recording = False


@pytest.fixture
def up() -> Iterator[UpstreamServer]:
    """A fresh local HTTP server."""
    with UpstreamServer() as server:
        yield server


def hosts(log: NetLog) -> set[str]:
    """The addresses connected to."""
    return {str(target[0]) for target in log.connects}


def wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    """Poll ``predicate`` until true or ``timeout`` seconds have passed."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# --------------------------------------------------------------------------- results


def test_get_returns_the_documented_result(up: UpstreamServer) -> None:
    """A plain GET returns status, selected lower-case headers, size, sha256, body, timings."""
    result = fetch_url(up.url("/ok"), limits=LOCAL)
    body = UpstreamServer.OK_BODY
    assert result["url"] == up.url("/ok")
    assert result["method"] == "GET"
    assert result["status"] == 200
    assert result["address"] == "127.0.0.1"
    assert result["headers"] == {
        "content-type": "text/plain; charset=utf-8",
        "content-length": str(len(body)),
        "etag": '"ok-v1"',
        "last-modified": "Wed, 01 Jan 2025 00:00:00 GMT",
        "cache-control": "max-age=60",
    }
    assert result["size"] == len(body)
    assert result["sha256"] == hashlib.sha256(body).hexdigest()
    assert result["body"] == body
    assert result["body_truncated"] is False
    assert result["redirects"] == []
    assert isinstance(result["elapsed_ms"], int)
    assert result["elapsed_ms"] >= 0
    json.dumps({k: v for k, v in result.items() if k != "body"})  # the rest is JSON-able


def test_request_headers(up: UpstreamServer) -> None:
    """The request carries the Host of the URL, the configured User-Agent and identity coding."""
    result = fetch_url(up.url("/echo"), limits=limits(user_agent="jobpool-test/1"))
    seen = json.loads(result["body"])["headers"]
    assert seen["host"] == f"127.0.0.1:{up.port}"
    assert seen["user-agent"] == "jobpool-test/1"
    assert seen["accept-encoding"] == "identity"


@pytest.mark.parametrize("n", [0, 1, 65535, 65536, 65537, 300_001])
@pytest.mark.parametrize("chunked", [False, True])
def test_sha256_and_size_match_the_body(up: UpstreamServer, n: int, chunked: bool) -> None:
    """size and sha256 cover exactly the bytes sent, with or without Content-Length."""
    url = up.url(f"/big?n={n}&chunked={int(chunked)}")
    result = fetch_url(url, limits=limits(store_body_max=1 << 20))
    expected = UpstreamServer.big_body(n)
    assert result["size"] == n
    assert result["sha256"] == hashlib.sha256(expected).hexdigest()
    assert result["body"] == expected


def test_body_over_store_limit_is_hashed_but_not_kept(up: UpstreamServer) -> None:
    """A body over store_body_max is read in full but returned as None with body_truncated."""
    n = 200_000
    at_limit = fetch_url(up.url(f"/big?n={n}"), limits=limits(store_body_max=n))
    assert at_limit["body"] == UpstreamServer.big_body(n)
    assert at_limit["body_truncated"] is False
    over = fetch_url(up.url(f"/big?n={n}"), limits=limits(store_body_max=n - 1))
    assert over["body"] is None
    assert over["body_truncated"] is True
    assert over["size"] == n
    assert over["sha256"] == hashlib.sha256(UpstreamServer.big_body(n)).hexdigest()


def test_head_reads_no_body(up: UpstreamServer) -> None:
    """HEAD returns the headers (Content-Length as announced), size 0 and the empty digest."""
    result = fetch_url(up.url("/head"), "HEAD", limits=LOCAL)
    assert result["method"] == "HEAD"
    assert result["status"] == 200
    assert result["headers"]["content-length"] == "1234"
    assert result["size"] == 0
    assert result["body"] == b""
    assert result["sha256"] == hashlib.sha256(b"").hexdigest()
    assert [r.method for r in up.requests] == ["HEAD"]


def test_head_is_not_refused_for_a_large_announced_length(up: UpstreamServer) -> None:
    """HEAD of a resource larger than max_bytes succeeds: nothing is read."""
    result = fetch_url(up.url("/big?n=5000000"), "head", limits=limits(max_bytes=1000))
    assert result["headers"]["content-length"] == "5000000"
    assert result["size"] == 0


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "CONNECT", "", "GET "])
def test_other_methods_are_refused(up: UpstreamServer, method: str) -> None:
    """Only GET and HEAD are allowed, and nothing is sent for the others."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/ok"), method, limits=LOCAL)
    assert info.value.kind == "bad_request"
    assert up.requests == []


def test_error_statuses_are_results(up: UpstreamServer) -> None:
    """A 404 or 500 from the upstream is a result with that status, not an error."""
    assert fetch_url(up.url("/missing"), limits=LOCAL)["status"] == 404
    assert fetch_url(up.url("/status/500"), limits=LOCAL)["status"] == 500


def test_connections_are_reused(up: UpstreamServer, netlog: NetLog) -> None:
    """Consecutive fetches to one server reuse the per-process keep-alive connection."""
    for _ in range(3):
        fetch_url(up.url("/ok"), limits=LOCAL)
    assert len({r.client for r in up.requests}) == 1
    assert len(netlog.connects) <= 1


def test_concurrent_fetches_share_the_pool(up: UpstreamServer) -> None:
    """fetch_url is safe to run from many threads at once, as the io pool does."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: fetch_url(up.url("/ok"), limits=LOCAL), range(32)))
    assert {r["status"] for r in results} == {200}
    assert len(up.requests) == 32


# --------------------------------------------------------------------------- size cap


@pytest.mark.parametrize("chunked", [False, True])
def test_body_of_exactly_max_bytes_passes(up: UpstreamServer, chunked: bool) -> None:
    """A body of exactly max_bytes is accepted."""
    result = fetch_url(
        up.url(f"/big?n=100000&chunked={int(chunked)}"), limits=limits(max_bytes=100_000)
    )
    assert result["size"] == 100_000


@pytest.mark.parametrize("chunked", [False, True])
def test_body_over_max_bytes_is_refused(up: UpstreamServer, chunked: bool) -> None:
    """One byte over max_bytes fails, announced (Content-Length) or not (chunked)."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url(f"/big?n=100001&chunked={int(chunked)}"), limits=limits(max_bytes=100_000))
    assert info.value.kind == "too_large"
    assert "100000" in str(info.value)


def test_oversized_stream_is_abandoned_early(up: UpstreamServer) -> None:
    """A 256 MiB chunked body over a 64 KiB cap is dropped at once, not downloaded."""
    total = 256 * 1024 * 1024
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_url(up.url(f"/big?n={total}&chunked=1"), limits=limits(max_bytes=64 * 1024))
    assert info.value.kind == "too_large"
    assert time.monotonic() - started < 2
    record = up.requests[-1]
    assert wait_for(lambda: record.disconnected)
    assert record.bytes_sent < 32 * 1024 * 1024


# --------------------------------------------------------------------------- timeouts and failures


def test_read_timeout(up: UpstreamServer) -> None:
    """A server slower than read_timeout_s fails the fetch with a timeout, promptly."""
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/slow?s=5"), limits=limits(read_timeout_s=0.3))
    assert info.value.kind == "timeout"
    assert "timed out" in str(info.value)
    assert time.monotonic() - started < 2


def test_read_timeout_in_the_body(up: UpstreamServer) -> None:
    """A body that stalls between bytes longer than read_timeout_s fails with a timeout."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/drip?n=3&interval=1"), limits=limits(read_timeout_s=0.3))
    assert info.value.kind == "timeout"


def test_total_deadline(up: UpstreamServer) -> None:
    """A body that keeps trickling within read_timeout_s is still cut off by deadline_s."""
    started = time.monotonic()
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/drip?n=100&interval=0.05"), limits=limits(deadline_s=0.4))
    assert info.value.kind == "timeout"
    assert "deadline" in str(info.value)
    assert time.monotonic() - started < 2


def test_body_shorter_than_announced(up: UpstreamServer) -> None:
    """A connection closed before Content-Length bytes arrived fails as a connection error."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/truncated"), limits=LOCAL)
    assert info.value.kind == "connection"


def test_ipv6_upstream(netlog: NetLog) -> None:
    """An IPv6 literal and a name with an AAAA answer are fetched over IPv6, Host bracketed."""
    server = UpstreamServer(host="::1")
    try:
        server.start()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    try:
        result = fetch_url(server.url("/echo"), limits=LOCAL)
        assert json.loads(result["body"])["headers"]["host"] == f"[::1]:{server.port}"
        assert result["address"] == "::1"
        dns = StaticResolver({"six.test": ["::1"]})
        guarded = limits(GUARDED, allowed_addresses=frozenset({ipaddress.IPv6Address("::1")}))
        named = fetch_url(server.url("/ok", host="six.test"), limits=guarded, resolver=dns)
        assert named["address"] == "::1"
        with pytest.raises(FetchError) as info:
            fetch_url(server.url("/ok"), limits=GUARDED)
        assert info.value.kind == "blocked"
    finally:
        server.stop()
    assert hosts(netlog) == {"::1"}


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_connection_refused() -> None:
    """A port nobody listens on fails with a connection error naming the address."""
    port = _closed_port()
    with pytest.raises(FetchError) as info:
        fetch_url(f"http://127.0.0.1:{port}/", limits=LOCAL)
    assert info.value.kind == "connection"
    assert f"127.0.0.1:{port}" in str(info.value)


def test_next_address_is_tried_when_one_refuses(up: UpstreamServer, netlog: NetLog) -> None:
    """When the first resolved address refuses the connection, the next checked one is used."""
    dns = StaticResolver({"multi.test": ["127.0.0.2", "127.0.0.1"]})
    result = fetch_url(up.url("/ok", host="multi.test"), limits=LOCAL, resolver=dns)
    assert result["status"] == 200
    assert result["address"] == "127.0.0.1"
    assert [c[0] for c in netlog.connects] == ["127.0.0.2", "127.0.0.1"]


def test_unresolvable_name() -> None:
    """A name that does not resolve fails with kind "dns"."""
    with pytest.raises(FetchError) as info:
        fetch_url("http://nowhere.test/", limits=GUARDED, resolver=StaticResolver({}))
    assert info.value.kind == "dns"


def test_fetch_error_pickles() -> None:
    """FetchError keeps its message and kind through pickling (job results cross processes)."""
    error = pickle.loads(pickle.dumps(FetchError("too many redirects", "too_many_redirects")))
    assert str(error) == "too many redirects"
    assert error.kind == "too_many_redirects"


@pytest.mark.parametrize(
    "changes",
    [
        {"connect_timeout_s": 0},
        {"read_timeout_s": -1},
        {"deadline_s": 0},
        {"max_bytes": -1},
        {"max_redirects": -1},
        {"store_body_max": -1},
        {"max_url_length": 5},
        {"user_agent": "a\r\nX-Injected: 1"},
    ],
)
def test_limits_are_validated(changes: dict[str, Any]) -> None:
    """FetchLimits refuses nonsensical values when it is built."""
    with pytest.raises(ValueError, match="must be"):
        limits(**changes)


# --------------------------------------------------------------------------- redirects


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_is_followed(up: UpstreamServer, status: int) -> None:
    """Each redirect status is followed to the final response, listed in "redirects"."""
    result = fetch_url(up.url(f"/redirect?to=/ok&status={status}"), limits=LOCAL)
    assert result["status"] == 200
    assert result["url"] == up.url("/ok")
    assert result["redirects"] == [up.url("/ok")]
    assert result["body"] == UpstreamServer.OK_BODY


def test_head_stays_head_across_redirects(up: UpstreamServer) -> None:
    """A HEAD fetch sends HEAD on every hop."""
    result = fetch_url(up.url("/redirect?to=/head&status=303"), "HEAD", limits=LOCAL)
    assert result["status"] == 200
    assert [r.method for r in up.requests] == ["HEAD", "HEAD"]


def test_redirect_chain_up_to_the_limit(up: UpstreamServer) -> None:
    """A chain of exactly max_redirects hops is followed, each hop listed in order."""
    result = fetch_url(up.url("/redirect-chain/3"), limits=limits(max_redirects=3))
    assert result["status"] == 200
    assert result["redirects"] == [up.url(f"/redirect-chain/{n}") for n in (2, 1, 0)]
    assert len({r.client for r in up.requests}) == 1  # one kept-alive connection for all hops


def test_too_many_redirects(up: UpstreamServer) -> None:
    """One redirect more than max_redirects fails, without following it."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/redirect-chain/4"), limits=limits(max_redirects=3))
    assert info.value.kind == "too_many_redirects"
    assert len(up.requests) == 4


def test_zero_redirects_allowed(up: UpstreamServer) -> None:
    """With max_redirects=0 any redirect fails."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/redirect?to=/ok"), limits=limits(max_redirects=0))
    assert info.value.kind == "too_many_redirects"


def test_redirect_without_location_is_the_result(up: UpstreamServer) -> None:
    """A 3xx without Location is returned as the final response."""
    result = fetch_url(up.url("/status/302"), limits=LOCAL)
    assert result["status"] == 302
    assert result["redirects"] == []


@pytest.mark.parametrize(
    "target",
    [
        "ftp://example.com/x",
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_x",
        "http://user:pw@127.0.0.1/",
        "http://[::1",
    ],
)
def test_redirect_to_forbidden_url(up: UpstreamServer, netlog: NetLog, target: str) -> None:
    """A redirect to another scheme, to credentials or to a malformed URL is always refused."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url(f"/redirect?to={quote(target, safe='')}"), limits=LOCAL)
    assert info.value.kind == "bad_url"
    assert str(info.value).startswith("redirect to")
    assert isinstance(info.value.__cause__, BadURL)
    assert len(up.requests) == 1
    assert len(netlog.connects) <= 1


# --------------------------------------------------------------------------- the guard


@pytest.mark.parametrize("url", SSRF_URLS)
def test_table_url_is_refused_before_any_lookup_or_connection(netlog: NetLog, url: str) -> None:
    """Every SSRF table URL is refused by fetch_url (guard on) with no lookup and no connect."""
    with pytest.raises(FetchError) as info:
        fetch_url(url, limits=FetchLimits())
    assert info.value.kind == "blocked"
    assert isinstance(info.value.__cause__, BlockedAddress)
    assert netlog.connects == []
    assert netlog.lookups == []


def test_guard_refuses_the_test_server_unless_its_address_is_allowed(
    up: UpstreamServer, netlog: NetLog
) -> None:
    """With the guard on, 127.0.0.1 is refused before connecting unless allow-listed."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/ok"), limits=limits(GUARDED, allowed_addresses=frozenset()))
    assert info.value.kind == "blocked"
    assert netlog.connects == []
    assert up.requests == []
    assert fetch_url(up.url("/ok"), limits=GUARDED)["status"] == 200


def test_name_resolving_to_loopback_is_refused(up: UpstreamServer, netlog: NetLog) -> None:
    """A name that resolves to 127.0.0.1 is refused with the guard on, before connecting."""
    dns = StaticResolver({"evil.test": ["127.0.0.1"]})
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/ok", host="evil.test"), limits=FetchLimits(), resolver=dns)
    assert info.value.kind == "blocked"
    assert "evil.test resolves to 127.0.0.1" in str(info.value)
    assert netlog.connects == []
    assert up.requests == []


def test_localhost_is_refused(up: UpstreamServer, netlog: NetLog) -> None:
    """http://localhost:port/ is refused by name, without a lookup or a connection."""
    with pytest.raises(FetchError) as info:
        fetch_url(up.url("/ok", host="localhost"), limits=GUARDED)
    assert info.value.kind == "blocked"
    assert netlog.connects == []
    assert netlog.lookups == []


def test_connects_to_the_checked_address_with_the_original_host(
    up: UpstreamServer, netlog: NetLog
) -> None:
    """A name is resolved once by the guard; the socket goes to that IP, Host names the name."""
    dns = StaticResolver({"allowed.test": ["127.0.0.1"]})
    result = fetch_url(up.url("/echo", host="allowed.test"), limits=GUARDED, resolver=dns)
    assert json.loads(result["body"])["headers"]["host"] == f"allowed.test:{up.port}"
    assert result["url"] == up.url("/echo", host="allowed.test")
    assert dns.calls == ["allowed.test"]
    assert hosts(netlog) == {"127.0.0.1"}
    assert "allowed.test" not in netlog.lookups  # urllib3 only ever saw the address


def test_dns_rebinding_has_no_effect(up: UpstreamServer, netlog: NetLog) -> None:
    """A resolver whose answer changes after the check is asked once per hop, never again."""
    answers = iter(["127.0.0.1"])

    def rebinding(host: str, port: int, family: int, type: int, proto: int, /) -> list[Any]:
        address = next(answers, "169.254.169.254")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    result = fetch_url(up.url("/ok", host="rebind.test"), limits=GUARDED, resolver=rebinding)
    assert result["status"] == 200
    assert hosts(netlog) == {"127.0.0.1"}
    assert next(answers, None) is None  # the single good answer was used up by one lookup


def test_each_redirect_hop_is_resolved_and_checked_again(
    up: UpstreamServer, netlog: NetLog
) -> None:
    """When the same name answers differently on the next hop, that hop is refused."""
    answers = iter(["127.0.0.1"])

    def rebinding(host: str, port: int, family: int, type: int, proto: int, /) -> list[Any]:
        address = next(answers, "169.254.169.254")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    url = up.url("/redirect-chain/1", host="rebind.test")
    with pytest.raises(FetchError) as info:
        fetch_url(url, limits=GUARDED, resolver=rebinding)
    assert info.value.kind == "blocked"
    assert "169.254.169.254 is link-local (cloud metadata)" in str(info.value)
    assert hosts(netlog) == {"127.0.0.1"}
    assert len(up.requests) == 1


REFUSED_REDIRECTS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://2852039166/latest/meta-data/",
    "http://0xa9fea9fe/",
    "http://[::ffff:169.254.169.254]/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://10.0.0.1/",
    "http://127.0.0.2:{port}/ok",
    "http://[::1]:{port}/ok",
    "http://localhost:{port}/ok",
    "http://metadata.google.internal/",
    "http://metadata.test/latest/meta-data/",
    "http://internal.test:{port}/ok",
    "https://192.168.1.1/",
]


@pytest.mark.parametrize("target", REFUSED_REDIRECTS)
def test_redirect_from_allowed_server_to_refused_address(
    up: UpstreamServer, netlog: NetLog, target: str
) -> None:
    """A redirect from an allowed server to an internal address is refused before connecting."""
    dns = StaticResolver(
        {
            "allowed.test": ["127.0.0.1"],
            "metadata.test": ["169.254.169.254"],
            "internal.test": ["93.184.215.14", "10.0.0.1"],
        }
    )
    target = target.format(port=up.port)
    start = up.url(f"/redirect?to={quote(target, safe='')}", host="allowed.test")
    with pytest.raises(FetchError) as info:
        fetch_url(start, limits=GUARDED, resolver=dns)
    assert info.value.kind == "blocked"
    assert str(info.value).startswith("redirect to ")
    assert isinstance(info.value.__cause__, BlockedAddress)
    assert [c[0] for c in netlog.connects] == ["127.0.0.1"]
    assert set(netlog.lookups) <= {"127.0.0.1"}
    assert len(up.requests) == 1


def test_redirect_between_allowed_hosts_passes(up: UpstreamServer, netlog: NetLog) -> None:
    """Redirects between allowed names are followed, each hop resolved by the guard once."""
    dns = StaticResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    target = up.url("/ok", host="b.test")
    start = up.url(f"/redirect?to={quote(target, safe='')}", host="a.test")
    result = fetch_url(start, limits=GUARDED, resolver=dns)
    assert result["status"] == 200
    assert result["redirects"] == [target]
    assert dns.calls == ["a.test", "b.test"]
    assert up.requests[-1].headers["host"] == f"b.test:{up.port}"


# --------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertFiles:
    """A throwaway CA and a certificate for upstream.test."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    return make_test_certs(Path(tmp_path_factory.mktemp("certs")), ("upstream.test",))


@pytest.fixture
def tls_up(certs: CertFiles) -> Iterator[UpstreamServer]:
    """A local HTTPS server presenting the upstream.test certificate."""
    with UpstreamServer(ssl_context=certs.server_context()) as server:
        yield server


def test_https_verifies_the_original_name(
    tls_up: UpstreamServer, certs: CertFiles, netlog: NetLog
) -> None:
    """https to a name connects to the checked IP, sends SNI for the name and verifies it."""
    dns = StaticResolver({"upstream.test": ["127.0.0.1"]})
    result = fetch_url(
        tls_up.url("/echo", host="upstream.test"),
        limits=limits(GUARDED, ca_file=str(certs.ca_file)),
        resolver=dns,
    )
    assert result["status"] == 200
    assert json.loads(result["body"])["headers"]["host"] == f"upstream.test:{tls_up.port}"
    assert tls_up.sni_names == ["upstream.test"]
    assert hosts(netlog) == {"127.0.0.1"}


def test_https_refuses_a_certificate_for_another_name(
    tls_up: UpstreamServer, certs: CertFiles
) -> None:
    """A certificate that does not name the URL's host fails the fetch with kind "tls"."""
    dns = StaticResolver({"other.test": ["127.0.0.1"]})
    with pytest.raises(FetchError) as info:
        fetch_url(
            tls_up.url("/ok", host="other.test"),
            limits=limits(GUARDED, ca_file=str(certs.ca_file)),
            resolver=dns,
        )
    assert info.value.kind == "tls"
    assert tls_up.requests == []


def test_https_refuses_an_untrusted_issuer(tls_up: UpstreamServer) -> None:
    """Without the test CA, the server's certificate is not trusted."""
    dns = StaticResolver({"upstream.test": ["127.0.0.1"]})
    with pytest.raises(FetchError) as info:
        fetch_url(tls_up.url("/ok", host="upstream.test"), limits=GUARDED, resolver=dns)
    assert info.value.kind == "tls"
    assert tls_up.requests == []


@pytest.mark.parametrize(
    "kind",
    ["bad_request", "bad_url", "blocked", "dns", "too_many_redirects", "too_large", "tls",
     "timeout", "connection"],
)  # fmt: skip
def test_only_connection_failures_are_worth_another_attempt(kind: str) -> None:
    """The fetch job's retry policy takes a failed connection or a timeout again, never a
    URL the guard refused or one that cannot work."""
    assert FetchError("x", kind).retryable is (kind in ("timeout", "connection"))
