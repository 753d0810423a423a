"""The SSRF guard: URL parsing, address rules, name rules, resolve-once checks."""

from __future__ import annotations

import ipaddress
import re
import socket
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.netguard import (
    BadURL,
    BlockedAddress,
    IPAddress,
    ParsedURL,
    check_ip,
    check_name,
    parse_url,
    precheck,
    resolve_checked,
)
from tests.upstream import StaticResolver

CASES = Path(__file__).parent / "cases" / "ssrf_addresses.txt"


def load_cases(path: Path) -> list[str]:
    """The URLs of a case table: one per line, '#' comments, blank lines skipped."""
    urls = []
    for line in path.read_text(encoding="utf-8").splitlines():
        url = re.split(r"\s+#", line.strip(), maxsplit=1)[0].strip()
        if url and not url.startswith("#"):
            urls.append(url)
    return urls


SSRF_URLS = load_cases(CASES)
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


def refusing_resolver(
    host: str, port: int, family: int, type: int, proto: int, /
) -> list[tuple[int, int, int, str, tuple[str, int]]]:
    raise AssertionError(f"no lookup expected, got one for {host!r}")


# --------------------------------------------------------------------------- the table


def test_case_table_is_substantial() -> None:
    """The SSRF table holds many cases and covers the metadata address in several spellings."""
    assert len(SSRF_URLS) > 100
    assert sum("169.254.169.254" in u or "a9fe" in u.lower() for u in SSRF_URLS) >= 10


@pytest.mark.parametrize("url", SSRF_URLS)
def test_table_url_is_refused_by_precheck(url: str) -> None:
    """Every URL of the SSRF table is refused at submit time as a blocked address or name."""
    with pytest.raises(BlockedAddress):
        precheck(url, allow_private=False)


@pytest.mark.parametrize("url", SSRF_URLS)
def test_table_url_is_well_formed(url: str) -> None:
    """Every URL of the SSRF table passes with allow_private, so it is refused for its host."""
    precheck(url, allow_private=True)


@pytest.mark.parametrize("url", SSRF_URLS)
def test_table_url_is_refused_by_resolve_checked_without_lookup(url: str) -> None:
    """resolve_checked refuses each table host before asking the resolver anything."""
    parsed = parse_url(url)
    with pytest.raises(BlockedAddress):
        resolve_checked(parsed.host, parsed.port, allow_private=False, resolver=refusing_resolver)


# --------------------------------------------------------------------------- check_ip


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("169.254.169.254", "link-local (cloud metadata)"),
        ("fd00:ec2::254", "unique-local (cloud metadata)"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private (RFC 1918)"),
        ("100.64.0.1", "private (CGNAT shared address space)"),
        ("fc00::1", "private (unique-local)"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.251", "multicast"),
        ("198.18.0.1", "benchmarking"),
        ("2001:db8::1", "documentation"),
    ],
)
def test_check_ip_names_the_reason(address: str, reason: str) -> None:
    """check_ip returns the rule an address breaks, in words."""
    assert check_ip(ip(address)) == reason


def test_blocked_address_message_says_address_and_reason() -> None:
    """The refusal message names the address and why, e.g. the metadata service."""
    with pytest.raises(BlockedAddress) as info:
        precheck("http://169.254.169.254/latest/meta-data/", allow_private=False)
    assert str(info.value) == "169.254.169.254 is link-local (cloud metadata)"
    assert info.value.address == "169.254.169.254"
    assert info.value.reason == "link-local (cloud metadata)"


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.215.14",
        "100.63.255.255",
        "100.128.0.0",
        "172.15.255.255",
        "172.32.0.0",
        "192.167.255.255",
        "169.253.255.255",
        "2606:4700:4700::1111",
        "2a00:1450:4001:80b::200e",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_check_ip_allows_public_addresses(address: str) -> None:
    """Public unicast addresses, and IPv6 forms embedding a public IPv4, are allowed."""
    assert check_ip(ip(address)) is None


def test_embedded_forms_name_the_inner_address() -> None:
    """A 6to4 address embedding loopback is refused with the embedded address in the reason."""
    reason = check_ip(ip("2002:7f00:1::1"))
    assert reason == "6to4 with embedded 127.0.0.1, which is loopback"


_ints = st.integers(min_value=0, max_value=2**32 - 1)


@given(_ints)
def test_allowed_ipv4_is_globally_routable(value: int) -> None:
    """Whatever check_ip allows, the standard library also calls globally routable."""
    address = ipaddress.IPv4Address(value)
    if check_ip(address) is None:
        assert address.is_global


@given(_ints)
@example(0xA9FEA9FE)
@example(0x7F000001)
def test_ipv6_forms_follow_their_embedded_ipv4(value: int) -> None:
    """IPv4-mapped, NAT64 and 6to4 forms are refused exactly when the embedded IPv4 is."""
    v4 = ipaddress.IPv4Address(value)
    refused = check_ip(v4) is not None
    mapped = ipaddress.IPv6Address((0xFFFF << 32) | value)
    nat64 = ipaddress.IPv6Address((0x64FF9B << 96) | value)
    six_to_four = ipaddress.IPv6Address((0x2002 << 112) | (value << 80) | 1)
    for form in (mapped, nat64, six_to_four):
        assert (check_ip(form) is not None) == refused, form


_REFUSED_V4 = [
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "240.0.0.0/4",
]


@given(st.sampled_from(_REFUSED_V4), st.integers(min_value=0, max_value=2**32 - 1))
def test_every_address_of_refused_ranges_is_refused(network: str, offset: int) -> None:
    """Any address inside a refused IPv4 range is refused, not just the well-known ones."""
    net = ipaddress.IPv4Network(network)
    address = net.network_address + offset % net.num_addresses
    assert check_ip(address) is not None


# --------------------------------------------------------------------------- IPv4 spellings


def _spell(value: int, parts: int, bases: list[int]) -> str:
    """``value`` written in ``parts`` inet_aton parts, each in the given base."""
    octets = value.to_bytes(4, "big")
    numbers = [*octets[: parts - 1], int.from_bytes(octets[parts - 1 :], "big")]
    out = []
    for number, base in zip(numbers, bases, strict=False):
        if base == 16:
            out.append(hex(number))
        elif base == 8:
            out.append("0" + format(number, "o"))
        else:
            out.append(str(number))
    return ".".join(out)


@given(
    _ints,
    st.integers(min_value=1, max_value=4),
    st.lists(st.sampled_from([8, 10, 16]), min_size=4, max_size=4),
)
def test_ipv4_spellings_agree_with_the_c_library(value: int, parts: int, bases: list[int]) -> None:
    """parse_url reads every inet_aton spelling as the C library (and getaddrinfo) does."""
    spelling = _spell(value, parts, bases)
    parsed = parse_url(f"http://{spelling}/")
    expected = ipaddress.IPv4Address(socket.inet_aton(spelling))
    assert parsed.ip == expected
    assert parsed.host == str(expected)
    numeric = socket.getaddrinfo(spelling, 80, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    assert {info[4][0] for info in numeric} == {str(expected)}


@pytest.mark.parametrize(
    "host", ["1.2.3.4.5", "256.0.0.1", "1.2.3.256", "1.2.65536", "4294967296", "08.0.0.1", "0x"]
)
def test_numeric_hosts_that_are_not_addresses_are_malformed(host: str) -> None:
    """A host ending in a number must be a valid IPv4 address, as the C library would refuse it."""
    with pytest.raises(OSError, match=r".*"):
        socket.inet_aton(host)
    with pytest.raises(BadURL):
        parse_url(f"http://{host}/")


# --------------------------------------------------------------------------- parse_url


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/file",
        "file:///etc/passwd",
        "gopher://example.com:70/_GET",
        "dict://example.com:11211/stat",
        "ldap://example.com/",
        "javascript:alert(1)",
        "data:text/plain,hi",
        "ws://example.com/",
        "//example.com/",
        "example.com/path",
        "",
    ],
)
@pytest.mark.parametrize("allow_private", [False, True])
def test_other_schemes_are_refused_even_with_allow_private(url: str, allow_private: bool) -> None:
    """Only absolute http and https URLs pass; allow_private never lifts that."""
    with pytest.raises(BadURL):
        precheck(url, allow_private=allow_private)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pass@example.com/",
        "http://user@example.com/",
        "http://:@example.com/",
        "http://example.com@127.0.0.1/",
        "https://a%40b:c@example.com/",
    ],
)
def test_userinfo_is_refused(url: str) -> None:
    """URLs carrying credentials (user:pass@) are refused whatever the host."""
    with pytest.raises(BadURL, match="credentials"):
        precheck(url, allow_private=True)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com:0/",
        "http://example.com:65536/",
        "http://example.com:99999/",
        "http://example.com:-1/",
        "http://example.com:8o/",
        "http://example.com:1:2/",
        "http://example.com:١٢/",
        "http://[::1]x/",
    ],
)
def test_bad_ports_are_refused(url: str) -> None:
    """Ports must be decimal numbers from 1 to 65535."""
    with pytest.raises(BadURL):
        parse_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "http:///path",
        "http://:80/",
        "http://./",
        "http://a..b/",
        "http://[]/",
        "http://[::1/",
        "http://[fe80::1%25eth0]/",
        "http://[v1.abc]/",
        "http://127.0.0.1%2f/",
        "http://exa mple.com/",
        "http://example.com/a b",
        "http://example.com\\@127.0.0.1/",
        "http://example.com/\r\nX-Injected: 1",
        "http://-leading.example/",
        "http://under\x00score.example/",
    ],
)
def test_malformed_urls_are_refused(url: str) -> None:
    """Empty hosts, broken brackets, zone ids, whitespace, controls and backslashes are refused."""
    with pytest.raises(BadURL):
        parse_url(url)


def test_long_urls_are_refused() -> None:
    """A URL over max_length characters is refused before any parsing."""
    url = "http://example.com/" + "a" * 100
    assert parse_url(url, max_length=len(url)).host == "example.com"
    with pytest.raises(BadURL, match="longer than"):
        parse_url(url, max_length=len(url) - 1)


def test_parse_url_normalises() -> None:
    """Scheme and host are lower-cased, the trailing dot and default port dropped, fragment too."""
    parsed = parse_url("HTTP://Example.COM.:080/p/ä?q=ü&r=1#frag")
    assert parsed == ParsedURL(
        scheme="http", host="example.com", port=80, target="/p/%C3%A4?q=%C3%BC&r=1"
    )
    assert parsed.url == "http://example.com/p/%C3%A4?q=%C3%BC&r=1"
    assert parsed.authority == "example.com"


def test_parse_url_idna_and_ports() -> None:
    """International names become IDNA ASCII; explicit ports and IPv6 brackets are kept."""
    assert parse_url("https://bücher.example/").host == "xn--bcher-kva.example"
    parsed = parse_url("https://[2606:4700::1]:8443")
    assert parsed.ip == ip("2606:4700::1")
    assert parsed.authority == "[2606:4700::1]:8443"
    assert parsed.url == "https://[2606:4700::1]:8443/"
    assert parse_url("http://h.example:/").port == 80
    assert parse_url("https://h.example/").port == 443


_label = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)


@given(
    st.lists(_label, min_size=1, max_size=4),
    st.sampled_from(["com", "org", "example", "xn--p1ai"]),
    st.sampled_from(["http", "https"]),
    st.integers(min_value=1, max_value=65535),
    st.from_regex(r"(/[A-Za-z0-9._~-]{0,8}){0,3}", fullmatch=True),
)
def test_parse_url_round_trips(
    labels: list[str], tld: str, scheme: str, port: int, path: str
) -> None:
    """Parsing the normalised form of a parsed URL gives the same parse."""
    parsed = parse_url(f"{scheme}://{'.'.join([*labels, tld])}:{port}{path}")
    assert parse_url(parsed.url) == parsed


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("localhost", True),
        ("a.b.localhost", True),
        ("metadata.google.internal", True),
        ("db.local", True),
        ("nas.home.arpa", True),
        ("intranet", True),
        ("example.com", False),
        ("localhost.example.com", False),
        ("internal.example.com", False),
    ],
)
def test_check_name(host: str, refused: bool) -> None:
    """Local-only names and single labels are refused; public names containing them are not."""
    assert (check_name(host) is not None) == refused


# --------------------------------------------------------------------------- resolve_checked


def test_name_resolving_to_loopback_is_refused() -> None:
    """A public-looking name whose answer is 127.0.0.1 is refused, naming both."""
    dns = StaticResolver({"evil.test": ["127.0.0.1"]})
    with pytest.raises(BlockedAddress) as info:
        resolve_checked("evil.test", 80, allow_private=False, resolver=dns)
    assert str(info.value) == "evil.test resolves to 127.0.0.1: 127.0.0.1 is loopback"
    assert dns.calls == ["evil.test"]


def test_localhost_is_refused_without_lookup() -> None:
    """localhost is refused by name, so the resolver (and /etc/hosts) is never asked."""
    with pytest.raises(BlockedAddress, match="localhost is a loopback name"):
        resolve_checked("localhost", 80, allow_private=False, resolver=refusing_resolver)


def test_any_refused_answer_refuses_the_name() -> None:
    """One refused address among public ones refuses the whole name."""
    dns = StaticResolver({"mixed.test": ["93.184.215.14", "2606:4700::1", "10.0.0.7"]})
    with pytest.raises(BlockedAddress, match=r"10\.0\.0\.7 is private"):
        resolve_checked("mixed.test", 443, allow_private=False, resolver=dns)


@pytest.mark.parametrize(
    "answer", ["::ffff:169.254.169.254", "fd00:ec2::254", "fe80::1%eth0", "::ffff:127.0.0.1"]
)
def test_refused_ipv6_answers(answer: str) -> None:
    """AAAA answers that map or point to internal addresses are refused too."""
    dns = StaticResolver({"v6.test": [answer]})
    with pytest.raises(BlockedAddress):
        resolve_checked("v6.test", 80, allow_private=False, resolver=dns)


def test_public_answers_are_returned_in_order_deduplicated() -> None:
    """Allowed answers come back once each, in resolver order, mapped IPv4 as IPv4."""
    dns = StaticResolver(
        {"ok.test": ["93.184.215.14", "2606:4700::1", "93.184.215.14", "::ffff:8.8.8.8"]}
    )
    got = resolve_checked("OK.TEST.", 80, allow_private=False, resolver=dns)
    assert got == [ip("93.184.215.14"), ip("2606:4700::1"), ip("8.8.8.8")]
    assert dns.calls == ["ok.test"]


def test_allow_private_lifts_address_and_name_rules() -> None:
    """With allow_private, loopback answers and local names are returned."""
    dns = StaticResolver({"evil.test": ["127.0.0.1"], "localhost": ["127.0.0.1", "::1"]})
    assert resolve_checked("evil.test", 80, allow_private=True, resolver=dns) == [LOOPBACK]
    assert resolve_checked("localhost", 80, allow_private=True, resolver=dns) == [
        LOOPBACK,
        ip("::1"),
    ]


def test_allowed_addresses_lift_exact_addresses_only() -> None:
    """An allow-listed address passes; its neighbours and other internal answers do not."""
    allowed = frozenset({LOOPBACK})
    dns = StaticResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.2"]})
    got = resolve_checked(
        "a.test", 80, allow_private=False, resolver=dns, allowed_addresses=allowed
    )
    assert got == [LOOPBACK]
    with pytest.raises(BlockedAddress, match=r"127\.0\.0\.2"):
        resolve_checked("b.test", 80, allow_private=False, resolver=dns, allowed_addresses=allowed)
    precheck("http://127.0.0.1:8080/", allow_private=False, allowed_addresses=allowed)
    with pytest.raises(BlockedAddress):
        precheck("http://127.0.0.2:8080/", allow_private=False, allowed_addresses=allowed)


def test_literal_hosts_are_not_looked_up() -> None:
    """A host that is an address (any spelling) is returned as that address without a lookup."""
    got = resolve_checked("0x5db8d70e", 80, allow_private=False, resolver=refusing_resolver)
    assert got == [ip("93.184.215.14")]
    assert resolve_checked("[2606:4700::1]", 80, allow_private=False, resolver=refusing_resolver)


def test_unresolvable_and_empty_answers_raise_gaierror() -> None:
    """A name without addresses raises socket.gaierror, not a refusal."""
    with pytest.raises(socket.gaierror):
        resolve_checked("nowhere.test", 80, allow_private=False, resolver=StaticResolver({}))
    with pytest.raises(socket.gaierror):
        resolve_checked(
            "empty.test", 80, allow_private=False, resolver=StaticResolver({"empty.test": []})
        )
