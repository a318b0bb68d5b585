"""Why the local cloud could not listen, in one line with what to do (``deployer localcloud up``)."""

from __future__ import annotations

import errno
import os
import socket

from deployer.errors import LocalCloudError

_ANY_PORT = "(0 = any free port)"


def listen_error(host: str, port: int, exc: OSError, *, what: str = "", flag: str = "--api-port") -> LocalCloudError:
    """``exc`` from binding ``host:port`` as a ``LocalCloudError`` that says why and what to change.

    aiohttp re-raises a bind failure as ``OSError(errno, "error while attempting to bind on address …")``:
    the errno is what tells the causes apart, not the text."""
    where = f"cannot listen on {host}:{port}{what}"
    if isinstance(exc, socket.gaierror):
        return LocalCloudError(
            f"{where}: cannot resolve {host} ({exc.strerror or exc})",
            hint="listen on an address of this machine: --host 127.0.0.1 (or 0.0.0.0 for every interface)",
        )
    if exc.errno == errno.EADDRINUSE:
        return LocalCloudError(
            f"{where}: {os.strerror(exc.errno)}",
            hint=f"another process holds that port; pick another with {flag} {_ANY_PORT}",
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return LocalCloudError(
            f"{where}: this machine has no address {host}",
            hint="listen on an address of this machine: --host 127.0.0.1 (or 0.0.0.0 for every interface)",
        )
    if exc.errno == errno.EACCES:
        return LocalCloudError(
            f"{where}: permission denied",
            hint=f"ports below 1024 need privileges; pick one above with {flag} {_ANY_PORT}",
        )
    reason = exc.strerror or (errno.errorcode.get(exc.errno or 0) if exc.errno else None) or str(exc)
    return LocalCloudError(f"{where}: {reason}")
