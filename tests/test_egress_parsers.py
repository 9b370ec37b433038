"""The egress proxy's request parsers: no input crashes them, each is a target or a refusal.

They decide everything a client can get wrong (egress/parsers.py), so they are fuzzed
with Hypothesis here; the real proxy answers the same refusals in test_egress_proxy.py.
"""

from __future__ import annotations

import base64
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krate.egress import parsers
from krate.egress.parsers import Greeted, Refusal, ResponseHeads, Target

LIMIT = 8192
SOCKS_KINDS = {"incomplete", "malformed", "atyp", "command"}
HTTP_KINDS = {"too-large", "incomplete", "bad-request"}
SECRET = "s3cr3t-Run_Token"
GOOD_AUTH = "Proxy-Authorization: Basic " + base64.b64encode(f"krate:{SECRET}".encode()).decode()
PROXY_407 = (
    b"HTTP/1.1 407 Proxy Authentication Required\r\n"
    b'Proxy-Authenticate: Basic realm="krate"\r\n'
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 48\r\n"
    b"X-Krate-Decision: deny\r\nConnection: close\r\n\r\n"
    b"client did not give this run's proxy credential\n"
)


def check_target(t: Target, data: bytes) -> None:
    assert isinstance(t.host, str) and t.host and 0 < t.port < 65536
    assert 0 < t.used <= len(data)
    assert parsers.normalize_host(t.host) == t.host  # the host is already normal


# ---------------------------------------------------------------- fuzz

request_lines = st.builds(
    lambda method, target, version, headers, rest: (
        f"{method} {target} {version}\r\n{headers}\r\n\r\n".encode("latin-1", "replace") + rest
    ),
    st.sampled_from(["CONNECT", "GET", "POST", "get", ""]),
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"\A(http|HTTP|ftp)://[a-z0-9.\[\]:@-]{0,30}(/[^ ]{0,10})?\Z"),
        st.from_regex(r"\A[a-z0-9.\[\]:-]{0,30}\Z"),
    ),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2", "http/1.1"]),
    st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=80),
    st.binary(max_size=20),
)


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=300), request_lines))
def test_any_http_bytes_give_a_target_or_a_refusal(data):
    result = parsers.http_request(data, LIMIT)
    if isinstance(result, Target):
        check_target(result, data)
        assert result.protocol in ("connect", "http")
        assert result.rewrite == (result.protocol == "http") == bool(result.send)
        if result.send:  # one request per connection, no proxy credentials passed on
            assert result.send.endswith(b"\r\n\r\n")
            assert b"Connection: " in result.send
            assert b"proxy-authorization" not in result.send.lower()
    else:
        assert isinstance(result, Refusal) and result.kind in HTTP_KINDS and result.reason
        assert result.reply == b"" or result.reply.startswith(b"HTTP/1.1 4")


auth_headers = st.one_of(
    st.just(GOOD_AUTH),
    st.builds(lambda t: f"Proxy-Authorization: Basic {t}", st.text(max_size=40)),
    st.builds(
        lambda pair: "Proxy-Authorization: Basic " + base64.b64encode(pair).decode(),
        st.one_of(st.binary(max_size=40), st.just(f"krate:{SECRET}x".encode())),
    ),
    st.text(st.characters(max_codepoint=255, exclude_characters="\r\n"), max_size=60),
)
authed_requests = st.builds(
    lambda method, target, auth: f"{method} {target} HTTP/1.1\r\n{auth}\r\n\r\n".encode(
        "latin-1", "replace"
    ),
    st.sampled_from(["CONNECT", "GET"]),
    st.sampled_from(["a.example:443", "http://a.example/p", "http://b:8080/", "bad"]),
    auth_headers,
)


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=300), request_lines, authed_requests))
def test_with_a_secret_only_this_runs_credential_gives_a_target(data):
    result = parsers.http_request(data, LIMIT, SECRET)
    plain = parsers.http_request(data, LIMIT)
    if isinstance(result, Target):
        assert result == plain  # the same target, the credential never passed on
        head = data[: result.used].decode("latin-1")
        assert GOOD_AUTH.lower() in head.lower().replace("\r\n ", " ")
        assert SECRET.encode() not in result.send
    elif result.kind == "unauthenticated":
        assert isinstance(plain, Target) and result.reply == PROXY_407
        assert (result.host, result.port, result.protocol) == (plain.host, plain.port,
                                                               plain.protocol)  # fmt: skip
    else:
        assert result == plain


socks_requests = st.builds(
    lambda ver, cmd, atyp, addr, port: bytes([ver, cmd, 0, atyp]) + addr + port,
    st.sampled_from([5, 5, 5, 4, 0]),
    st.one_of(st.just(1), st.integers(0, 255)),
    st.sampled_from([1, 3, 4, 2, 0]),
    st.one_of(
        st.binary(max_size=20),
        st.builds(lambda name: bytes([len(name)]) + name, st.binary(max_size=30)),
        st.builds(
            lambda name: bytes([len(name)]) + name.encode(),
            st.from_regex(r"\A[a-zA-Z0-9.-]{0,40}\Z"),
        ),
    ),
    st.one_of(st.binary(min_size=2, max_size=2), st.binary(max_size=1)),
)


@settings(max_examples=400)
@given(st.one_of(st.binary(max_size=80), socks_requests))
def test_any_socks_request_gives_a_target_or_a_refusal(data):
    result = parsers.socks_request(data)
    if isinstance(result, Target):
        check_target(result, data)
        assert result.protocol == "socks5" and result.used == parsers.socks_request_size(data)
        assert data[:2] == b"\x05\x01"
    else:
        assert isinstance(result, Refusal) and result.kind in SOCKS_KINDS and result.reason
        assert result.reply == b"" or (len(result.reply) == 10 and result.reply[1] != 0)


@given(st.binary(max_size=300))
def test_any_socks_greeting_is_accepted_or_refused(data):
    result = parsers.socks_greeting(data)
    if isinstance(result, Greeted):
        assert data[0] == 5 and 0 in data[2 : result.used] and result.reply == b"\x05\x00"
    else:
        assert isinstance(result, Refusal) and result.kind in {"incomplete", "auth"}


@given(st.binary(max_size=300))
def test_with_a_secret_a_socks_greeting_must_offer_username_password(data):
    result = parsers.socks_greeting(data, userpass=True)
    if isinstance(result, Greeted):
        assert data[0] == 5 and 2 in data[2 : result.used] and result.reply == b"\x05\x02"
    else:
        assert result.kind in {"incomplete", "unauthenticated"}
        assert result.reply in (b"", b"\x05\xff")


def rfc1929(user: bytes, password: bytes) -> bytes:
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


@given(
    st.one_of(
        st.binary(max_size=80),
        st.builds(rfc1929, st.binary(max_size=20), st.binary(max_size=40)),
        st.builds(lambda p: rfc1929(b"krate", p), st.binary(max_size=40)),
    )
)
def test_only_this_runs_socks_username_and_password_pass(data):
    result = parsers.socks_auth(data, SECRET)
    if isinstance(result, Greeted):
        assert data[: result.used] == rfc1929(b"krate", SECRET.encode())
        assert result.reply == b"\x01\x00"
    else:
        assert result.kind == "unauthenticated" and result.reply == b"\x01\x01"
    assert parsers.socks_auth_size(data) >= 2


@given(st.lists(st.binary(max_size=200), max_size=6), st.integers(16, 400))
def test_response_heads_pass_everything_after_the_first_final_head(chunks, limit):
    feed = ResponseHeads(limit)
    out = b""
    try:
        for chunk in chunks:
            out += feed(chunk)
    except ValueError:
        assert not feed.done
        return
    if feed.done:
        assert out.split(b"\r\n\r\n")[-1] in b"".join(chunks)  # the body passed untouched
    else:
        assert b"".join(chunks).find(b"\r\n\r\n") < 0 or out  # held back: no final head yet


@given(st.binary(max_size=200))
def test_framing_never_asks_for_less_than_it_has_parsed(data):
    assert parsers.socks_greeting_size(data) >= 2
    assert parsers.socks_request_size(data) >= 4
    size = parsers.http_head_size(data, LIMIT)
    assert size is None or 0 <= size <= len(data)


# ---------------------------------------------------------------- each refusal, by example


def test_http_refusals_answer_as_before():
    big = parsers.http_request(b"GET http://a/ HTTP/1.1\r\nX: " + b"a" * LIMIT + b"\r\n\r\n", LIMIT)
    assert big.kind == "too-large" and big.reason == f"request header over {LIMIT} bytes"
    assert big.reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    unfinished = parsers.http_request(b"GET http://a/ HTTP/1.1\r\nHost: a\r\n", LIMIT)
    assert unfinished == Refusal("incomplete", "incomplete request header")
    cases = {
        b"GET / HTTP/1.1\r\n\r\n": "not an absolute http:// URI (use CONNECT for https)",
        b"GET https://a/ HTTP/1.1\r\n\r\n": "not an absolute http:// URI (use CONNECT for https)",
        b"GET http://a/ SPDY\r\n\r\n": "malformed request line",
        b"CONNECT a HTTP/1.1\r\n\r\n": "bad CONNECT target: port missing",
        b"CONNECT a:0 HTTP/1.1\r\n\r\n": "bad CONNECT target: port out of range",
        b"CONNECT [::1:443 HTTP/1.1\r\n\r\n": (
            "bad CONNECT target: missing `]` after an IPv6 address"
        ),
        b"GET http://a:x/ HTTP/1.1\r\n\r\n": "bad URI authority: port is not a number",
        b"GET http://[::1/ HTTP/1.1\r\n\r\n": "not an absolute http:// URI (use CONNECT for https)",
    }
    for data, reason in cases.items():
        refusal = parsers.http_request(data, LIMIT)._replace(protocol=None)
        assert refusal == Refusal(
            "bad-request", reason, parsers.http_error(400, "Bad Request", reason)
        )
    assert parsers.http_request(b"CONNECT a HTTP/1.1\r\n\r\n", LIMIT).protocol == "connect"
    body = f"{reason}\n".encode()
    assert parsers.http_error(400, "Bad Request", reason) == (
        b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + f"Content-Length: {len(body)}\r\nX-Krate-Decision: deny\r\n".encode()
        + b"Connection: close\r\n\r\n"
        + body
    )


def test_http_targets_and_the_rewritten_request():
    data = (
        b"GET http://user@Example.COM:8080/p?q=1 HTTP/1.1\r\nHost: other\r\n"
        b"Proxy-Authorization: Basic eA==\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\nBODY"
    )
    target = parsers.http_request(data, LIMIT)
    assert target == Target(
        "http", "example.com", 8080, len(data) - 4,
        b"GET /p?q=1 HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n"
        b"Connection: close\r\n\r\n",
        rewrite=True,
    )  # fmt: skip
    head = b"CONNECT [::1]:443 HTTP/1.1\r\n\r\n"
    assert parsers.http_request(head + b"early", LIMIT) == Target("connect", "::1", 443, len(head))


def test_credential_refusals_answer_byte_exact():
    for head in (b"CONNECT a.example:443 HTTP/1.1\r\n", b"GET http://a.example/x HTTP/1.1\r\n"):
        for auth in (
            b"",  # none
            b"Proxy-Authorization: Basic " + base64.b64encode(b"krate:wrong") + b"\r\n",
            b"Proxy-Authorization: Basic "
            + base64.b64encode(b"other:" + SECRET.encode())
            + b"\r\n",
            b"Proxy-Authorization: Bearer " + SECRET.encode() + b"\r\n",
            b"Proxy-Authorization: Basic !!notbase64\r\n",
            b"Authorization: " + GOOD_AUTH.split(": ", 1)[1].encode() + b"\r\n",  # origin's
        ):
            refusal = parsers.http_request(head + auth + b"\r\n", LIMIT, SECRET)
            assert refusal == Refusal(
                "unauthenticated",
                "client did not give this run's proxy credential",
                PROXY_407,
                "a.example",
                443 if head.startswith(b"CONNECT") else 80,
                "connect" if head.startswith(b"CONNECT") else "http",
            ), auth
    ok = f"GET http://a.example/x HTTP/1.1\r\nproxy-authorization:  basic {GOOD_AUTH[27:]}\r\n\r\n"
    target = parsers.http_request(ok.encode(), LIMIT, SECRET)
    assert target.send == b"GET /x HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n"
    # Malformed requests are still answered as malformed, credential or not.
    assert parsers.http_request(b"GET / HTTP/1.1\r\n\r\n", LIMIT, SECRET).kind == "bad-request"
    # SOCKS5: only username/password (2) is offered, then RFC 1929 checks the pair.
    assert parsers.socks_greeting(b"\x05\x01\x00", userpass=True) == Refusal(
        "unauthenticated", "client did not give this run's proxy credential", b"\x05\xff",
        protocol="socks5",
    )  # fmt: skip
    assert parsers.socks_greeting(b"\x05\x02\x00\x02", userpass=True) == Greeted(4, b"\x05\x02")
    good = rfc1929(b"krate", SECRET.encode())
    assert parsers.socks_auth(good + b"\x05", SECRET) == Greeted(len(good), b"\x01\x00")
    for bad in (
        rfc1929(b"krate", b"wrong"),
        rfc1929(b"krat", b"e:" + SECRET.encode()),
        rfc1929(b"", SECRET.encode()),
        b"\x05" + good[1:],
        good[:-1],
    ):
        refused = parsers.socks_auth(bad, SECRET)
        assert refused.kind == "unauthenticated" and refused.reply == b"\x01\x01", bad


def test_socks_refusals_answer_as_before():
    assert parsers.socks_greeting(b"\x05\x01\x02") == Refusal(
        "auth", "SOCKS client offered no acceptable authentication method", b"\x05\xff"
    )
    assert parsers.socks_greeting(b"\x05\x02\x00") == Refusal(
        "incomplete", "incomplete SOCKS greeting"
    )
    assert parsers.socks_greeting(b"\x05\x02\x02\x00") == Greeted(4)
    failure, command, atyp = (bytes([5, c, 0, 1, 0, 0, 0, 0, 0, 0]) for c in (1, 7, 8))
    assert parsers.socks_request(b"\x04\x01\x00\x01") == Refusal(
        "malformed", "malformed SOCKS request"
    )
    assert parsers.socks_request(b"\x05\x01\x00\x02") == Refusal(
        "atyp", "unsupported SOCKS address type", atyp
    )
    assert parsers.socks_request(b"\x05\x01\x00\x01\x7f\x00") == Refusal(
        "incomplete", "incomplete SOCKS request"
    )
    bad_name = b"\x05\x01\x00\x03\x03a b\x00\x50"
    zero_port = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00"
    for data in (bad_name, zero_port, b"\x05\x01\x00\x03\x02\xff\xfe\x00\x50"):
        assert parsers.socks_request(data) == Refusal(
            "malformed", "malformed SOCKS destination", failure
        )
    bind = b"\x05\x02\x00\x03\x0bexample.com\x01\xbb"
    assert parsers.socks_request(bind) == Refusal(
        "command", "only the SOCKS CONNECT command is supported", command, "example.com", 443
    )


@pytest.mark.parametrize(
    ("data", "host"),
    [
        (b"\x05\x01\x00\x01\x7f\x00\x00\x01", "127.0.0.1"),
        (b"\x05\x01\x00\x04" + ipaddress.ip_address("::1").packed, "::1"),
        (b"\x05\x01\x00\x03\x0cExample.COM.", "example.com"),
    ],
)
def test_socks_targets(data, host):
    assert parsers.socks_request(data + b"\x01\xbb") == Target("socks5", host, 443, len(data) + 2)


def test_refused_dials_answer_as_before():
    where = ("denied.example", 80, "default: no rule allows it", "builtin:strict", "--allow-host d")
    reason = "denied.example:80 is not allowed; to allow it: --allow-host d"
    denied = parsers.refused("http", "denied", reason, where)
    assert denied.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert denied.endswith(
        b"krate: denied.example:80 is not allowed (rule: default: no rule allows it, "
        b"layer: builtin:strict).\nTo allow it: krate run --allow-host d -- ...\n"
    )
    # No hint (input that is no host at all): no line suggesting a flag.
    bad = parsers.refused("http", "denied", "bad..name:80: invalid host name", where[:4] + ("",))
    assert bad.endswith(b"(rule: default: no rule allows it, layer: builtin:strict).\n")
    statuses = {"busy": b"503 Service", "timeout": b"504 Gateway", "refused": b"502 Bad Gateway"}
    for kind, status in statuses.items():
        assert parsers.refused("connect", kind, "why", where).startswith(b"HTTP/1.1 " + status)
    codes = {"denied": 2, "busy": 2, "unreachable": 4, "refused": 5, "timeout": 6, "other": 1}
    for kind, code in codes.items():
        assert parsers.refused("socks5", kind, "why", where) == bytes([5, code, 0, 1] + [0] * 6)
    assert parsers.refused("forward", "denied", "why", where) == b""
    assert parsers.connected("connect") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert parsers.connected("socks5") == bytes([5, 0, 0, 1] + [0] * 6)


def test_response_heads_interim_switching_and_final():
    feed = ResponseHeads(LIMIT)
    assert feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nKeep-Alive: 5\r\nCon") == (
        b"HTTP/1.1 100 Continue\r\n\r\n"
    )
    assert feed(b"nection: keep-alive\r\nA: b\r\n\r\nbody") == (
        b"HTTP/1.1 200 OK\r\nA: b\r\nConnection: close\r\n\r\nbody"
    )
    assert feed(b"HTTP/1.1 200 OK\r\n\r\n") == b"HTTP/1.1 200 OK\r\n\r\n"  # body, untouched
    switching = ResponseHeads(LIMIT)
    head = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\r\n"
    assert switching(head + b"\x81\x00") == head + b"\x81\x00" and switching.done
    with pytest.raises(ValueError):
        ResponseHeads(16)(b"HTTP/1.1 200 OK\r\nX-Long: header\r\n")
