"""``GateSpec``: everything one gate run needs, validated once (a bad value is a ``UsageError``, exit 2)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from deployer.errors import UsageError
from deployer.gate.verdict import Thresholds

# Headers the WebSocket handshake itself writes; overriding them would break the probe, not test the target.
_HANDSHAKE_HEADERS = frozenset(
    {
        "upgrade",
        "connection",
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "host",
        "origin",
    }
)
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # RFC 9110 token (a header name)


LOCALHOST_SUFFIX = ".localhost"


def loopback_target(url: str) -> tuple[str, str | None]:
    """A URL on ``localhost`` or a ``*.localhost`` name → (the URL on 127.0.0.1, the name as Host header);
    any other URL unchanged, with no Host. RFC 6761 §6.3: "localhost names" resolve to the loopback address,
    and not every resolver does so for subdomains (this machine's does not), so the gate does it itself —
    the local cloud routes ``TAG---SERVICE.localhost:PORT`` by that Host."""
    parts = urlsplit(url)
    if not parts.hostname or not (parts.hostname == "localhost" or parts.hostname.endswith(LOCALHOST_SUFFIX)):
        return url, None
    netloc = "127.0.0.1" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)), parts.netloc


def parse_header(text: str) -> tuple[str, str]:
    """``'Name: value'`` → ``("Name", "value")``; a ``UsageError`` naming the problem otherwise."""
    name, sep, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not sep or not name:
        raise UsageError(f"header {text!r} is not 'Name: value'")
    if not _TOKEN.match(name):
        raise UsageError(f"header name {name!r} is not a valid HTTP header name")
    if any(c in value for c in "\r\n\0"):
        raise UsageError(f"header {name} has a line break or NUL in its value")
    return name, value


@dataclass(frozen=True)
class GateSpec:
    """One gate run. Times are seconds unless named ``_ms``.

    ``url``          ws:// or wss:// URL of the WebSocket endpoint
    ``connections``  N connections in total, ``concurrency`` at most C at once
    ``open_timeout_s`` TCP connect + TLS + upgrade must finish within it
    ``pings``        WebSocket pings per connection (RTT measured), each within ``ping_timeout_s``
    ``send``/``expect`` optional app exchange: send the text, wait for a text message matching the
                     regex (``re.search``) within ``app_timeout_s``; other messages (heartbeats) are skipped
    ``hold_s``       keep each connection open this long, answering server pings; any close is recorded
    ``headers``      extra request headers ((name, value) pairs); never printed, only their names
    ``bearer_env``   name of an environment variable holding a bearer token (``Authorization: Bearer``)
    ``id_token``     fetch a Google ID token (google-auth) for IAM-protected Cloud Run; audience is
                     ``audience`` or ``https://<host of url>``
    ``subprotocols`` offered subprotocols; ``origin`` the Origin header
    ``host``         Host header (and TLS server name) to send instead of the URL's, e.g. to reach a tagged
                     revision through a load balancer: ``TAG---SERVICE.localhost``
    ``compression``  offer permessage-deflate like browsers do
    ``ca_file``      extra CA bundle to trust for wss:// (e.g. a test CA); system CAs otherwise
    """

    url: str
    connections: int = 20
    concurrency: int = 50
    open_timeout_s: float = 10.0
    pings: int = 1
    ping_timeout_s: float = 5.0
    send: str | None = None
    expect: str | None = None
    app_timeout_s: float = 5.0
    hold_s: float = 0.0
    close_timeout_s: float = 5.0
    headers: tuple[tuple[str, str], ...] = ()
    bearer_env: str | None = None
    id_token: bool = False
    audience: str | None = None
    subprotocols: tuple[str, ...] = ()
    origin: str | None = None
    host: str | None = None
    compression: bool = True
    ca_file: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ws", "wss"):
            raise UsageError(f"URL must start with ws:// or wss:// (got {self.url!r})")
        if not parts.hostname:
            raise UsageError(f"URL {self.url!r} has no host")
        try:
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            raise UsageError(f"URL {self.url!r} has an invalid port") from None
        if self.connections < 1:
            raise UsageError(f"--connections must be at least 1 (got {self.connections})")
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1 (got {self.concurrency})")
        if self.pings < 0:
            raise UsageError(f"--ping must be 0 or more (got {self.pings})")
        if self.hold_s < 0:
            raise UsageError(f"--hold must be 0 or more seconds (got {self.hold_s})")
        for name in ("open_timeout_s", "ping_timeout_s", "app_timeout_s", "close_timeout_s"):
            if getattr(self, name) <= 0:
                flag = "--" + name.removesuffix("_s").replace("_", "-")  # open_timeout_s → --open-timeout
                raise UsageError(f"{flag} must be a positive number of seconds (got {getattr(self, name)})")
        if (self.send is None) != (self.expect is None):
            raise UsageError("--send and --expect go together (send a message, expect a reply matching a regex)")
        if self.expect is not None:
            try:
                re.compile(self.expect)
            except re.error as exc:
                raise UsageError(f"--expect {self.expect!r} is not a valid regex: {exc}") from None
        for name, value in self.headers:
            parse_header(f"{name}: {value}")
            if name.lower() in _HANDSHAKE_HEADERS:
                hint = {"host": " (use --host)", "origin": " (use --origin)"}.get(name.lower(), "")
                raise UsageError(f"header {name} is set by the WebSocket handshake and cannot be overridden{hint}")
        if self.bearer_env is not None and self.id_token:
            raise UsageError("--bearer-env and --id-token both set Authorization; choose one")
        if self.bearer_env is not None and any(n.lower() == "authorization" for n, _ in self.headers):
            raise UsageError("--bearer-env and an Authorization --header both set Authorization; choose one")
        for p in self.subprotocols:
            if not _TOKEN.match(p):
                raise UsageError(f"subprotocol {p!r} is not a valid token")
        if self.host is not None and not re.match(r"^[A-Za-z0-9.\-\[\]:]+$", self.host):
            raise UsageError(f"--host {self.host!r} is not a host name")

    @property
    def secure(self) -> bool:
        return self.url.startswith("wss://")

    def describe(self) -> dict[str, Any]:
        """The run's settings for evidence: header *names* only, never values or tokens."""
        return {
            "url": self.url,
            "host": self.host,
            "connections": self.connections,
            "concurrency": self.concurrency,
            "open_timeout_s": self.open_timeout_s,
            "pings": self.pings,
            "hold_s": self.hold_s,
            "app_exchange": self.send is not None,
            "expect": self.expect,
            "header_names": [n for n, _ in self.headers],
            "auth": "bearer" if self.bearer_env else "google-id-token" if self.id_token else None,
            "bearer_env": self.bearer_env,
            "subprotocols": list(self.subprotocols),
            "origin": self.origin,
            "compression": self.compression,
        }
