"""Where a webhook may go. A callback URL must be http(s) and, unless
``QAAS_WEBHOOK_ALLOW_PRIVATE`` is set, every address its host resolves to must be public: the
service must not become a way to reach its own network (metadata endpoints, the database,
the broker). Checked at job creation and again at each delivery, where the request then goes
to the address that was checked, so a name that re-resolves elsewhere (DNS rebinding) cannot
slip through."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from app.core.errors import InvalidInput

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class RefusedAddress(InvalidInput):
    """The callback URL is not one the service will call; the detail says why."""


@dataclass(frozen=True)
class Destination:
    """A vetted callback: the URL to send to (host replaced by the checked address), and the
    original host name for the Host header and TLS (SNI and certificate check)."""

    url: str
    host_header: str
    server_name: str


def parse(url: str) -> SplitResult:
    """Syntax only (no DNS): http or https, a host, no credentials, nothing unprintable."""
    if any(ord(char) <= 32 or ord(char) == 127 for char in url):
        raise RefusedAddress("callback_url must not hold spaces or control characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise RefusedAddress(f"callback_url must be an http or https URL, not {url!r}")
    if not parts.hostname:
        raise RefusedAddress(f"callback_url has no host: {url!r}")
    if parts.username or parts.password:
        raise RefusedAddress("callback_url must not carry credentials; the webhook is signed")
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise RefusedAddress(f"callback_url has an invalid port: {url!r}") from None
    return parts


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise RefusedAddress(f"callback_url host {host!r} does not resolve: {error}") from None
    # A scoped IPv6 address comes back as "fe80::1%eth0"; the scope does not change the verdict.
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def vet(url: str, *, allow_private: bool) -> Destination:
    """Resolve ``url``'s host and check every address; raise ``RefusedAddress`` (422)."""
    parts = parse(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = resolve(host, port)
    if not allow_private:
        refused = sorted({str(a) for a in addresses if not is_public(a)})
        if refused:
            raise RefusedAddress(
                f"callback_url host {host!r} resolves to {', '.join(refused)}: private, "
                "loopback, link-local and reserved addresses are refused (the operator may "
                "allow them with QAAS_WEBHOOK_ALLOW_PRIVATE=1)"
            )
    address = addresses[0]
    literal = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{literal}:{port}"
    return Destination(
        url=parts._replace(netloc=netloc).geturl(),
        host_header=parts.netloc.rpartition("@")[2],
        server_name=host,
    )
