"""Why a call got no answer: a pure reading of the network error behind a failed Google client call.

``requests`` reports a refused connection as ``ConnectionError(MaxRetryError(NewConnectionError(…)
from ConnectionRefusedError))`` and its ``str`` is a 300-character pool description. A user needs
two facts from it: *what* could not be reached (the endpoint: the local cloud, or Google) and *why*
(refused, DNS, timed out, reset). ``network_failure(exc)`` digs them out of the exception chain;
``describe(failure, method, attempts)`` turns them into the one line and the hint the CLI prints.

Nothing here retries or decides what is transient (``retry.py`` does); a failure to connect is
still retried as the policy says, only its final words change.
"""

from __future__ import annotations

import errno
import http.client
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import requests.exceptions as rexc
import urllib3.exceptions as uexc

# What `deployer localcloud up` listens on by default (deployer/cli.py --api-port).
LOCAL_CLOUD_DEFAULT_PORT = 8480
START_LOCAL_CLOUD = "deployer localcloud up{port} --seed configs/local-world.yaml --lb-port 8080"
# The README's load-balancer port; any free one works (the public gate reads the service's URI).
LOCAL_LB_PORT = 8080

_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN, errno.EHOSTDOWN}


@dataclass(frozen=True)
class NetworkFailure:
    """A call that ended without an HTTP answer.

    ``endpoint`` is ``scheme://host[:port]`` of what was called (``None`` when the error does not say);
    ``connected`` is False when the connection never opened, so nothing was sent.
    """

    endpoint: str | None
    host: str | None
    port: int | None
    reason: str
    connected: bool

    @property
    def is_google(self) -> bool:
        """Google's own front end (``*.googleapis.com``); anything else is a configured ``endpoint:``."""
        return bool(self.host) and (self.host == "googleapis.com" or str(self.host).endswith(".googleapis.com"))

    @property
    def is_loopback(self) -> bool:
        if not self.host:
            return False
        if self.host == "localhost" or self.host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and everything it wraps: args, urllib3's ``reason``, ``__cause__`` and ``__context__``."""
    out: list[BaseException] = []
    todo: list[BaseException] = [exc]
    seen: set[int] = set()
    while todo and len(out) < 32:
        cur = todo.pop(0)
        if id(cur) in seen:
            continue
        seen.add(id(cur))
        out.append(cur)
        nested = [a for a in getattr(cur, "args", ()) if isinstance(a, BaseException)]
        reason = getattr(cur, "reason", None)
        if isinstance(reason, BaseException):
            nested.append(reason)
        nested += [e for e in (cur.__cause__, cur.__context__) if e is not None]
        todo.extend(nested)
    return out


def _where(chain: list[BaseException]) -> tuple[str | None, str | None, int | None]:
    """(endpoint, host, port) of the call, from the request ``requests`` kept or urllib3's pool."""
    for exc in chain:
        request = getattr(exc, "request", None)
        url = getattr(request, "url", None)
        if isinstance(url, str) and url:
            parts = urlsplit(url)
            if parts.hostname:
                return f"{parts.scheme}://{parts.netloc}", parts.hostname, parts.port
    for exc in chain:
        pool = getattr(exc, "pool", None) or getattr(exc, "conn", None)
        host = getattr(pool, "host", None)
        if isinstance(host, str) and host:
            port = getattr(pool, "port", None)
            scheme = getattr(pool, "scheme", None) or ("https" if "HTTPS" in type(pool).__name__ else "http")
            netloc = f"{host}:{port}" if port else host
            return f"{scheme}://{netloc}", host, int(port) if port else None
    return None, None, None


def _why(chain: list[BaseException], host: str | None) -> tuple[str, bool] | None:
    """(reason, connected) for the first network cause recognized in ``chain``."""
    never_opened = any(isinstance(e, (uexc.NewConnectionError, rexc.ConnectTimeout)) for e in chain)
    if any(isinstance(e, ConnectionRefusedError) for e in chain):
        return "connection refused", False
    if any(isinstance(e, (socket.gaierror, uexc.NameResolutionError)) for e in chain):
        return f"cannot resolve {host}" if host else "cannot resolve the host name", False
    for exc in chain:
        if isinstance(exc, OSError) and exc.errno in _UNREACHABLE_ERRNOS:
            return (exc.strerror or "network unreachable").lower(), False
    if any(isinstance(e, (uexc.ReadTimeoutError, rexc.ReadTimeout)) for e in chain):
        return "no answer before the timeout", True
    # urllib3's NewConnectionError subclasses ConnectTimeoutError: only a *bare* one is a timeout.
    if any(isinstance(e, rexc.ConnectTimeout) or type(e) is uexc.ConnectTimeoutError for e in chain) or (
        never_opened and any(isinstance(e, TimeoutError) for e in chain)
    ):
        return "connection timed out", False
    for exc in chain:
        if isinstance(exc, ConnectionResetError):
            return "connection reset", True
        if isinstance(exc, BrokenPipeError):
            return "connection broken", True
        if isinstance(exc, http.client.RemoteDisconnected):
            return "the server closed the connection without answering", True
        if isinstance(exc, (http.client.IncompleteRead, rexc.ChunkedEncodingError)):
            return "the answer was cut off", True
    if never_opened:
        return "could not connect", False
    for exc in chain:
        if isinstance(exc, (rexc.ConnectionError, rexc.Timeout, uexc.ProtocolError, ConnectionError, TimeoutError)):
            return "the connection failed", True
    return None


def network_failure(exc: BaseException) -> NetworkFailure | None:
    """What could not be reached and why, when ``exc`` is a network failure (else ``None``).

    TLS and proxy errors are not read here: they are configuration, and ``retry.to_cloud_error``
    words them itself.
    """
    chain = _chain(exc)
    if any(isinstance(e, (rexc.SSLError, uexc.SSLError, rexc.ProxyError, uexc.ProxyError)) for e in chain):
        return None
    endpoint, host, port = _where(chain)
    why = _why(chain, host)
    if why is None:
        return None
    reason, connected = why
    return NetworkFailure(endpoint=endpoint, host=host, port=port, reason=reason, connected=connected)


def describe(failure: NetworkFailure, *, method: str, attempts: int) -> tuple[str, str]:
    """The error line and the hint for a call that never got an answer."""
    what = "Google's API" if failure.is_google else "the local cloud"
    at = f" at {failure.endpoint}" if failure.endpoint else ""
    tries = f", {attempts} attempts" if attempts > 1 else ""
    if failure.connected:
        message = f"lost the connection to {what}{at} ({failure.reason}{tries}) during {method}"
    else:
        message = f"cannot reach {what}{at} ({failure.reason}{tries}) for {method}"
    if failure.is_google:
        hint = (
            f"check this machine's network to {failure.host}: DNS, a firewall, or a proxy (HTTPS_PROXY / NO_PROXY)"
            if not failure.connected
            else "Google's API kept dropping the connection; run the command again later"
        )
    elif failure.is_loopback:
        start = start_local_cloud(failure.host, failure.port)
        hint = (
            f"start it with: {start}"
            if not failure.connected
            else f"did the local cloud stop? its terminal says why; start it again with: {start}"
        )
    else:
        hint = f"is the local cloud running on {failure.host} and reachable from here? (the config's `endpoint:`)"
    return message, hint


def start_local_cloud(host: str | None, port: int | None) -> str:
    """The ``localcloud up`` that serves the config's endpoint: its port (unless the default), its address
    when ``localcloud up`` would not listen there by default (127.0.0.1), and a load-balancer port that is
    not the API's own (an endpoint on :8080 must not be told ``--api-port 8080 ... --lb-port 8080``)."""
    flags = "" if port in (None, LOCAL_CLOUD_DEFAULT_PORT) else f" --api-port {port}"
    if host and host not in ("127.0.0.1", "localhost") and not host.endswith(".localhost"):
        flags += f" --host {host.strip('[]')}"
    start = START_LOCAL_CLOUD.format(port=flags)
    if port == LOCAL_LB_PORT:
        start = start.replace(f"--lb-port {LOCAL_LB_PORT}", f"--lb-port {LOCAL_LB_PORT + 1}")
    return start


def tls_failure(exc: BaseException, *, method: str) -> tuple[str, str] | None:
    """The line and hint for a TLS failure (``https://`` to a plain-HTTP local cloud, an intercepting
    proxy), or ``None`` when ``exc`` is not one."""
    chain = _chain(exc)
    if not any(isinstance(e, (rexc.SSLError, uexc.SSLError, ssl.SSLError)) for e in chain):
        return None
    endpoint, host, port = _where(chain)
    why = next((str(e.reason) for e in chain if isinstance(e, ssl.SSLError) and getattr(e, "reason", None)), "")
    why = why.replace("_", " ").lower() or "handshake failed"
    failure = NetworkFailure(endpoint, host, port, why, connected=True)
    at = f" with {endpoint}" if endpoint else ""
    if failure.is_google:
        hint = "something between this machine and Google intercepts TLS (a proxy?); see REQUESTS_CA_BUNDLE"
    else:
        plain = f"http://{host}:{port}" if host and port else "http://127.0.0.1:8480"
        hint = f"the local cloud speaks plain HTTP: write the endpoint as {plain}"
    return f"{method}: TLS{at} failed ({why})", hint
