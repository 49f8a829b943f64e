"""executors.egress: the one way out. Refusals happen before any connection is made, so
the non-loopback addresses below are never contacted; real traffic only goes to the
loopback receiver."""

from __future__ import annotations

import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from executors.egress import EgressPolicy, EgressResponse, check_url, request
from executors.errors import EgressRefused, PermanentError, RetryableError
from tests.http_receiver import Receiver, Reply

LOOPBACK = EgressPolicy(allow=("127.0.0.1",))
SLOW = 0.5  # seconds a slow reply takes; every client timeout below is shorter


@pytest.fixture(scope="module")
def other_server() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


@pytest.fixture
def other(other_server: Receiver) -> Receiver:
    """A second loopback server: another port, so another origin."""
    other_server.requests.clear()
    other_server.replies.clear()
    return other_server


# --- check_url ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("ftp://example.com/file", "ftp"),
        ("file:///etc/passwd", "file"),
        ("gopher://127.0.0.1:70/", "gopher"),
        ("javascript:alert(1)", "javascript"),
    ],
)
def test_refuses_other_schemes(url: str, scheme: str) -> None:
    with pytest.raises(EgressRefused) as caught:
        check_url(url, EgressPolicy(allow=("0.0.0.0/0", "::/0")))
    assert str(caught.value) == f"only http and https URLs may be fetched, not {scheme!r}"


def test_refuses_a_url_without_scheme() -> None:
    with pytest.raises(
        EgressRefused, match=r"^only http and https URLs may be fetched, not 'none'"
    ):
        check_url("//example.com/", EgressPolicy())


def test_refuses_a_url_without_host() -> None:
    with pytest.raises(EgressRefused, match=r"^URL 'http:///path' has no host$"):
        check_url("http:///path", EgressPolicy())


@pytest.mark.parametrize(
    ("url", "host", "address"),
    [
        ("http://127.0.0.1/", "127.0.0.1", "127.0.0.1"),
        ("http://127.1.2.3:8080/", "127.1.2.3", "127.1.2.3"),
        ("http://[::1]/", "::1", "::1"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", "::ffff:127.0.0.1"),
        ("http://[::ffff:10.0.0.1]/", "::ffff:10.0.0.1", "::ffff:10.0.0.1"),
        ("http://10.0.0.1/", "10.0.0.1", "10.0.0.1"),
        ("https://172.16.5.4/", "172.16.5.4", "172.16.5.4"),
        ("http://192.168.1.1/admin", "192.168.1.1", "192.168.1.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", "169.254.169.254"),
        ("http://[fe80::1]/", "fe80::1", "fe80::1"),
        ("http://[fd00::1]/", "fd00::1", "fd00::1"),
        ("http://0.0.0.0/", "0.0.0.0", "0.0.0.0"),
        ("http://100.64.0.1/", "100.64.0.1", "100.64.0.1"),
        ("http://224.0.0.251/", "224.0.0.251", "224.0.0.251"),
        ("http://[64:ff9b::a00:1]/", "64:ff9b::a00:1", "64:ff9b::a00:1"),  # NAT64 of 10.0.0.1
        ("http://[2002:a00:1::1]/", "2002:a00:1::1", "2002:a00:1::1"),  # 6to4 of 10.0.0.1
        ("http://[::10.0.0.1]/", "::10.0.0.1", "::10.0.0.1"),  # IPv4-compatible
        ("http://2130706433/", "2130706433", "127.0.0.1"),  # decimal spelling
        ("http://127.1/", "127.1", "127.0.0.1"),  # short spelling
    ],
)
def test_refuses_non_public_addresses(url: str, host: str, address: str) -> None:
    with pytest.raises(EgressRefused) as caught:
        check_url(url, EgressPolicy())
    shown = ipaddress.ip_address(address)  # how this Python spells it (::ffff:7f00:1 on 3.11)
    assert str(caught.value) == (
        f"refused to connect to {host!r}: it resolves to {shown}, which is not a public "
        "address (operators can allow it with SCHEDULER_EGRESS_ALLOW)"
    )


def test_embedded_public_ipv4_stays_allowed() -> None:
    from executors.egress import _public

    assert _public(ipaddress.ip_address("64:ff9b::808:808"))  # NAT64 of 8.8.8.8
    assert not _public(ipaddress.ip_address("64:ff9b::7f00:1"))  # NAT64 of 127.0.0.1


def test_refuses_localhost_whatever_it_resolves_to() -> None:
    with pytest.raises(EgressRefused, match=r"^refused to connect to 'localhost': it resolves to"):
        check_url("http://localhost:8000/", EgressPolicy())


def test_refusal_is_a_permanent_error() -> None:
    with pytest.raises(PermanentError):
        check_url("http://10.0.0.1/", EgressPolicy())


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.215.14/",
        "https://8.8.8.8:443/dns",
        "http://[2606:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
    ],
)
def test_allows_public_addresses(url: str) -> None:
    assert check_url(url, EgressPolicy()) is None


@pytest.mark.parametrize(
    "policy",
    [
        EgressPolicy(allow=("127.0.0.1",)),
        EgressPolicy(allow=("127.0.0.0/8",)),
        EgressPolicy(allow=("10.0.0.0/8", "127.0.0.0/8")),
    ],
)
def test_allow_list_admits_loopback(policy: EgressPolicy) -> None:
    assert check_url("http://127.0.0.1:9/", policy) is None


def test_allowed_network_does_not_admit_its_neighbours() -> None:
    policy = EgressPolicy(allow=("127.0.0.1", "10.1.0.0/16"))
    assert check_url("http://10.1.200.3/", policy) is None
    for url in ("http://127.0.0.2/", "http://10.2.0.1/", "http://[::1]/"):
        with pytest.raises(EgressRefused):
            check_url(url, policy)


def test_allowed_host_name_is_matched_case_insensitively() -> None:
    policy = EgressPolicy(allow=("LocalHost",))
    assert policy.allows_host("localhost.")
    assert not policy.allows_host("localhost.localdomain")
    assert check_url("http://localhost:9/", policy) is None


def test_policy_allows_address_only_for_networks() -> None:
    policy = EgressPolicy(allow=("internal.example", "192.168.0.0/24"))
    assert policy.allows_address(ipaddress.ip_address("192.168.0.77"))
    assert not policy.allows_address(ipaddress.ip_address("192.168.1.77"))
    assert not policy.allows_host("192.168.0.77")
    assert policy.allows_host("internal.example")


# --- request against the loopback receiver ------------------------------------------


def test_request_sends_and_returns_the_response(receiver: Receiver) -> None:
    receiver.reply("/r", Reply(status=201, body={"made": 1}, headers={"X-Thing": "yes"}))
    response = request(
        "POST",
        f"{receiver.url}/r",
        LOOPBACK,
        headers={"X-A": "1"},
        params={"q": "v"},
        json={"k": [1, 2]},
    )
    assert isinstance(response, EgressResponse)
    assert response.status == 201
    assert response.json() == {"made": 1}
    assert response.text == '{"made": 1}'
    assert response.content == b'{"made": 1}'
    assert response.headers["X-Thing"] == "yes"
    assert response.url == f"{receiver.url}/r"
    assert response.history == []
    [got] = receiver.received("/r")
    assert (got.method, got.path, got.headers["X-A"]) == ("POST", "/r?q=v", "1")
    assert got.json() == {"k": [1, 2]}


def test_request_to_loopback_is_refused_without_allow(receiver: Receiver) -> None:
    with pytest.raises(EgressRefused):
        request("GET", f"{receiver.url}/r", EgressPolicy())
    assert receiver.requests == []


def test_request_refuses_other_schemes_before_sending() -> None:
    with pytest.raises(EgressRefused, match="not 'file'"):
        request("GET", "file:///etc/passwd", LOOPBACK)


def test_follows_a_303_as_get_without_body(receiver: Receiver) -> None:
    receiver.reply("/start", Reply(status=303, headers={"Location": "/done"}))
    receiver.reply("/done", Reply(body={"at": "done"}))
    response = request("POST", f"{receiver.url}/start", LOOPBACK, json={"a": 1})
    assert response.status == 200
    assert response.json() == {"at": "done"}
    assert response.url == f"{receiver.url}/done"
    assert response.history == [f"{receiver.url}/start"]
    [first] = receiver.received("/start")
    [second] = receiver.received("/done")
    assert (first.method, first.json()) == ("POST", {"a": 1})
    assert (second.method, second.body) == ("GET", b"")
    assert "Content-Type" not in second.headers


def test_follows_a_302_post_as_get(receiver: Receiver) -> None:
    receiver.reply("/start", Reply(status=302, headers={"Location": f"{receiver.url}/done"}))
    request("POST", f"{receiver.url}/start", LOOPBACK, data=b"payload")
    [second] = receiver.received("/done")
    assert (second.method, second.body) == ("GET", b"")


@pytest.mark.parametrize("status", [307, 308])
def test_follows_307_and_308_keeping_method_and_body(receiver: Receiver, status: int) -> None:
    receiver.reply("/start", Reply(status=status, headers={"Location": "/done"}))
    request("PUT", f"{receiver.url}/start", LOOPBACK, json={"keep": True})
    [second] = receiver.received("/done")
    assert (second.method, second.json()) == ("PUT", {"keep": True})


def test_query_params_are_not_carried_across_redirects(receiver: Receiver) -> None:
    receiver.reply("/start", Reply(status=302, headers={"Location": "/done?from=redirect"}))
    request("GET", f"{receiver.url}/start", LOOPBACK, params={"secret": "s"})
    assert [r.path for r in receiver.requests] == ["/start?secret=s", "/done?from=redirect"]


@pytest.mark.parametrize(
    "location",
    [
        "http://10.0.0.1/",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:127.0.0.1]/",
        "http://127.0.0.2/",
        "ftp://127.0.0.1/",
    ],
)
def test_redirect_hops_are_checked_again(receiver: Receiver, location: str) -> None:
    receiver.reply("/start", Reply(status=302, headers={"Location": location}))
    with pytest.raises(EgressRefused):
        request("GET", f"{receiver.url}/start", LOOPBACK)
    assert [r.path for r in receiver.requests] == ["/start"]


SECRETS = {"Authorization": "Bearer s3cret", "Cookie": "session=abc", "X-Trace": "t-1"}


def test_same_origin_redirect_keeps_credentials(receiver: Receiver) -> None:
    receiver.reply("/start", Reply(status=307, headers={"Location": "/done"}))
    request("GET", f"{receiver.url}/start", LOOPBACK, headers=dict(SECRETS))
    [second] = receiver.received("/done")
    assert {k: second.headers.get(k) for k in SECRETS} == SECRETS


def test_cross_origin_redirect_drops_credentials(receiver: Receiver, other: Receiver) -> None:
    receiver.reply("/start", Reply(status=307, headers={"Location": f"{other.url}/x"}))
    response = request("GET", f"{receiver.url}/start", LOOPBACK, headers=dict(SECRETS))
    assert response.status == 200
    [first] = receiver.received("/start")
    [second] = other.received("/x")
    assert {k: first.headers.get(k) for k in SECRETS} == SECRETS
    assert {k: second.headers.get(k) for k in SECRETS} == {
        "Authorization": None,
        "Cookie": None,
        "X-Trace": "t-1",
    }


def test_too_many_redirects_is_permanent(receiver: Receiver) -> None:
    receiver.reply("/loop", Reply(status=302, headers={"Location": "/loop"}))
    policy = EgressPolicy(allow=("127.0.0.1",), max_redirects=2)
    with pytest.raises(PermanentError) as caught:
        request("GET", f"{receiver.url}/loop", policy)
    assert str(caught.value) == "more than 2 redirects"
    assert len(receiver.received("/loop")) == 3


def test_redirect_status_without_location_is_returned(receiver: Receiver) -> None:
    receiver.reply("/r", Reply(status=302, body={"no": "location"}))
    response = request("GET", f"{receiver.url}/r", LOOPBACK)
    assert (response.status, response.json(), response.history) == (302, {"no": "location"}, [])


def test_response_larger_than_the_cap_is_permanent(receiver: Receiver) -> None:
    receiver.reply("/big", Reply(body=b"x" * 2001))
    policy = EgressPolicy(allow=("127.0.0.1",), max_bytes=2000)
    with pytest.raises(PermanentError) as caught:
        request("GET", f"{receiver.url}/big", policy)
    assert str(caught.value) == "response is larger than the 2000-byte limit"


def test_response_at_the_cap_is_read_whole(receiver: Receiver) -> None:
    receiver.reply("/big", Reply(body=b"x" * 2000))
    policy = EgressPolicy(allow=("127.0.0.1",), max_bytes=2000)
    assert request("GET", f"{receiver.url}/big", policy).content == b"x" * 2000


def test_large_response_over_several_chunks_is_capped(receiver: Receiver) -> None:
    receiver.reply("/big", Reply(body=b"y" * 300_000))
    policy = EgressPolicy(allow=("127.0.0.1",), max_bytes=200_000)
    with pytest.raises(PermanentError, match="200000-byte limit"):
        request("GET", f"{receiver.url}/big", policy)


def test_timeout_is_retryable(receiver: Receiver) -> None:
    receiver.reply("/slow", Reply(delay=SLOW))
    policy = EgressPolicy(allow=("127.0.0.1",), timeout=0.2)
    with pytest.raises(RetryableError) as caught:
        request("GET", f"{receiver.url}/slow", policy)
    assert str(caught.value) == f"GET {receiver.url}/slow timed out after 0.2s"


def test_request_timeout_cannot_exceed_the_policy(receiver: Receiver) -> None:
    receiver.reply("/slow", Reply(delay=SLOW))
    policy = EgressPolicy(allow=("127.0.0.1",), timeout=0.2)
    with pytest.raises(RetryableError, match=r"timed out after 0\.2s$"):
        request("GET", f"{receiver.url}/slow", policy, timeout=60)


def test_shorter_request_timeout_wins(receiver: Receiver) -> None:
    receiver.reply("/slow", Reply(delay=SLOW))
    with pytest.raises(RetryableError, match=r"timed out after 0\.1s$"):
        request("GET", f"{receiver.url}/slow", LOOPBACK, timeout=0.1)


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port any more.
    with pytest.raises(RetryableError) as caught:
        request("GET", f"http://127.0.0.1:{port}/", LOOPBACK)
    assert str(caught.value) == (
        f"GET http://127.0.0.1:{port}/ failed to connect ([Errno 111] Connection refused)"
    )
    assert not isinstance(caught.value, PermanentError)


def test_dns_answer_that_changes_after_the_check_is_refused(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to a public address when checked and to loopback
    when connected. The connection's real peer is checked before any byte is sent."""
    real = socket.getaddrinfo
    answers = iter([("93.184.216.34", 80)])

    def rebinding(host: str, port: object, *args: object, **kwargs: object) -> object:
        if host == "rebind.test":
            try:
                address = next(answers)
            except StopIteration:
                address = ("127.0.0.1", receiver.server.server_address[1])
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address)]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    port = receiver.server.server_address[1]
    with pytest.raises(EgressRefused, match="it resolves to 127.0.0.1, which is not a public"):
        request("GET", f"http://rebind.test:{port}/secret", EgressPolicy())
    assert receiver.received("/secret") == []


def test_errors_never_show_the_query_string() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RetryableError) as caught:
        request(
            "GET",
            f"http://127.0.0.1:{port}/hook?token=SECRET1",
            LOOPBACK,
            params={"api_key": "SECRET2"},
        )
    assert "SECRET" not in str(caught.value)
    assert str(caught.value).startswith(f"GET http://127.0.0.1:{port}/hook failed to connect")


def test_invalid_port_is_refused_not_crashed() -> None:
    with pytest.raises(EgressRefused, match="invalid port"):
        check_url("http://example.com:99999/x", EgressPolicy())


def test_a_body_dripped_slowly_is_cut_at_the_overall_timeout() -> None:
    """The timeout bounds the whole request, not each read."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def drip() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n")
            for _ in range(40):
                try:
                    conn.sendall(b"x" * 20)
                except OSError:
                    return
                time.sleep(0.1)

    thread = threading.Thread(target=drip, daemon=True)
    thread.start()
    started = time.monotonic()
    with pytest.raises(RetryableError, match="did not arrive within the timeout"):
        request("GET", f"http://127.0.0.1:{port}/", LOOPBACK, timeout=1.0)
    assert time.monotonic() - started < 2.5
    listener.close()
