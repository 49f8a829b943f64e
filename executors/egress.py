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
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

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
    if policy.allows_host(host):
        return
    try:
        infos = socket.getaddrinfo(
            host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM
        )
    except socket.gaierror as exc:
        raise RetryableError(f"could not resolve {host!r}: {exc}") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not (_public(address) or policy.allows_address(address)):
            raise EgressRefused(
                f"refused to connect to {host!r}: it resolves to {address}, which is not a public "
                "address (operators can allow it with SCHEDULER_EGRESS_ALLOW)"
            )


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
    with requests.Session() as session:
        session.trust_env = False
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
                raise RetryableError(f"{method} {url} timed out after {timeout:g}s") from None
            except requests.ConnectionError as exc:
                raise RetryableError(f"{method} {url} failed to connect: {exc}") from None
            except requests.RequestException as exc:
                raise PermanentError(f"{method} {url} could not be sent: {exc}") from None
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
                content = _read_capped(response, policy.max_bytes)
                return EgressResponse(
                    response.status_code, dict(response.headers), content, url, history
                )
    raise PermanentError(f"more than {policy.max_redirects} redirects")


def _read_capped(response: requests.Response, max_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    try:
        for chunk in response.iter_content(chunk_size=65536):
            size += len(chunk)
            if size > max_bytes:
                raise PermanentError(f"response is larger than the {max_bytes}-byte limit")
            chunks.append(chunk)
    except requests.RequestException as exc:
        raise RetryableError(f"reading the response failed: {exc}") from None
    return b"".join(chunks)
