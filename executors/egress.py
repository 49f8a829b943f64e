"""The one way out: every outbound HTTP request of an action goes through here.

Only http and https; the host is resolved and every address it resolves to must be
public, unless the operator allowed that host or network (``SCHEDULER_EGRESS_ALLOW``);
redirects are followed by hand so that every hop is checked again; time and response
size are capped.
"""

from __future__ import annotations

import ipaddress
import json as jsonlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import EgressRefused, PermanentError, RetryableError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
# Never carried to another origin by a redirect (as requests does for Authorization).
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})


@dataclass(frozen=True)
class EgressPolicy:
    allow: tuple[str, ...] = ()
    timeout: float = 30.0
    max_bytes: int = 5 * 1024 * 1024
    max_redirects: int = 5

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in {a.lower() for a in self.allow if not _is_network(a)}

    def allows_address(self, address: IPAddress) -> bool:
        for item in self.allow:
            if _is_network(item) and address in ipaddress.ip_network(item, strict=False):
                return True
        return False


def _is_network(item: str) -> bool:
    try:
        ipaddress.ip_network(item, strict=False)
    except ValueError:
        return False
    return True


@dataclass
class EgressResponse:
    status: int
    headers: dict[str, str]
    content: bytes
    url: str
    history: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)


NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo, NAT64, compatible)."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64 or address in IPV4_COMPATIBLE:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return _public(embedded)
    return address.is_global and not address.is_multicast


def check_http_url(value: str) -> str:
    """``value`` if it is an absolute http(s) URL with a host and a valid port, else
    ValueError (for the ``url`` field validators of action configs)."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError("must be an absolute http:// or https:// URL")
    try:
        parts.port  # noqa: B018 - raises on a port outside 0-65535
    except ValueError:
        raise ValueError("has an invalid port") from None
    return value


def check_url(url: str, policy: EgressPolicy) -> None:
    """Raise EgressRefused unless ``url`` may be fetched under ``policy``."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"}:
        raise EgressRefused(
            f"only http and https URLs may be fetched, not {parts.scheme or 'none'!r}"
        )
    host = parts.hostname
    if not host:
        raise EgressRefused(f"URL {url!r} has no host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise EgressRefused(f"URL for {host!r} has an invalid port") from None
    if policy.allows_host(host):
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise RetryableError(f"could not resolve {host!r}: {exc}") from None
    for info in infos:
        _check_address(host, str(info[4][0]), policy)


def _check_address(host: str, text: str, policy: EgressPolicy) -> None:
    address = ipaddress.ip_address(text.split("%")[0])
    if not (_public(address) or policy.allows_address(address)):
        raise EgressRefused(
            f"refused to connect to {host!r}: it resolves to {address}, which is not a public "
            "address (operators can allow it with SCHEDULER_EGRESS_ALLOW)"
        )


def _checked_session(policy: EgressPolicy) -> requests.Session:
    """A session whose connections re-check the address they actually reached, before a
    byte is sent: a DNS answer that changes after check_url (rebinding) is refused."""

    class CheckedConnection:
        def _new_conn(self) -> socket.socket:
            sock = super()._new_conn()  # type: ignore[misc]
            if not policy.allows_host(self.host):  # type: ignore[attr-defined]
                try:
                    _check_address(self.host, sock.getpeername()[0], policy)  # type: ignore[attr-defined]
                except EgressRefused:
                    sock.close()
                    raise
            return sock

    class HTTPPool(HTTPConnectionPool):
        ConnectionCls = type("CheckedHTTPConnection", (CheckedConnection, HTTPConnection), {})

    class HTTPSPool(HTTPSConnectionPool):
        ConnectionCls = type("CheckedHTTPSConnection", (CheckedConnection, HTTPSConnection), {})

    class Adapter(HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    session = requests.Session()
    session.trust_env = False  # no proxies from the environment: we check the real peer
    adapter = Adapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def request(
    method: str,
    url: str,
    policy: EgressPolicy,
    *,
    headers: dict[str, str] | None = None,
    params: dict[str, Any] | None = None,
    json: Any = None,
    data: Any = None,
    timeout: float | None = None,
) -> EgressResponse:
    """Send one request, following checked redirects; read at most ``policy.max_bytes``."""
    timeout = min(timeout or policy.timeout, policy.timeout)
    history: list[str] = []
    deadline = time.monotonic() + timeout
    with _checked_session(policy) as session:
        for _ in range(policy.max_redirects + 1):
            check_url(url, policy)
            try:
                response = session.request(
                    method,
                    url,
                    headers=headers,
                    params=params,
                    json=json,
                    data=data,
                    timeout=timeout,
                    allow_redirects=False,
                    stream=True,
                )
            except requests.Timeout:
                raise RetryableError(
                    f"{method} {redact(url)} timed out after {timeout:g}s"
                ) from None
            except requests.ConnectionError as exc:
                raise RetryableError(
                    f"{method} {redact(url)} failed to connect ({_reason(exc)})"
                ) from None
            except requests.RequestException as exc:
                raise PermanentError(
                    f"{method} {redact(url)} could not be sent ({_reason(exc)})"
                ) from None
            with response:
                location = response.headers.get("Location")
                if response.status_code in REDIRECT_CODES and location:
                    history.append(url)
                    target = urljoin(url, location)
                    if headers and session.should_strip_auth(url, target):
                        headers = {
                            k: v for k, v in headers.items() if k.lower() not in CREDENTIAL_HEADERS
                        }
                    url = target
                    params = None
                    if response.status_code == 303 or (
                        response.status_code in {301, 302} and method.upper() == "POST"
                    ):
                        method, json, data = "GET", None, None
                    continue
                content = _read_capped(response, policy.max_bytes, deadline)
                return EgressResponse(
                    response.status_code, dict(response.headers), content, url, history
                )
    raise PermanentError(f"more than {policy.max_redirects} redirects")


def _read_capped(response: requests.Response, max_bytes: int, deadline: float) -> bytes:
    """Read the body within the size cap and the request's overall deadline (read1 hands
    back what has arrived, so a server dripping bytes cannot stretch the timeout)."""
    chunks: list[bytes] = []
    size = 0
    try:
        while chunk := response.raw.read1(65536, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise PermanentError(f"response is larger than the {max_bytes}-byte limit")
            if time.monotonic() > deadline:
                raise RetryableError("the response did not arrive within the timeout")
            chunks.append(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        raise RetryableError(f"reading the response failed ({_reason(exc)})") from None
    return b"".join(chunks)


def redact(url: str) -> str:
    """A URL as it may be shown in errors and logs: query strings often carry tokens."""
    return urlsplit(url)._replace(query="", fragment="").geturl()


def _reason(exc: BaseException) -> str:
    """Why a request failed, without the URL (urllib3's messages repeat it, query and all)."""
    text = str(exc)
    for marker in (
        "[Errno",
        "Name or service",
        "timed out",
        "Connection refused",
        "Connection reset",
        "certificate verify failed",
    ):
        index = text.find(marker)
        if index >= 0:
            return text[index:].split("'))")[0].split('"))')[0].rstrip(")'\"")
    return type(exc).__name__
