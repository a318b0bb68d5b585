"""A lossy network between a client and the local cloud: a real TCP proxy that can lose answers.

The local cloud's fault injection fails a call *before* it is applied. What makes a mutation's
outcome unknown in real life is the other case: Google applied it and the answer never arrived (a
reset, a timeout), or the request was still in flight when the client gave up. This proxy produces
both on real sockets, for the next request whose request line starts with a given prefix:

- ``lose_answer(prefix)``: forward the request, wait until the server starts answering (so it has
  been applied), then close the client's connection without passing the answer on.
- ``hold_request(prefix)``: keep the request and close the client's connection at once (the client
  gives up); the held request reaches the server just before the next request with that prefix —
  it "lands late", after whatever the client did in between.

Every other byte is passed through unchanged. Requests are framed by ``Content-Length`` (what the
storage client sends); chunked request bodies are not supported.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from dataclasses import dataclass, field


def _read_request(conn: socket.socket, buffer: bytearray) -> bytes | None:
    """One whole HTTP request (head + Content-Length body) from ``conn``; None at EOF."""
    while b"\r\n\r\n" not in buffer:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head_end = buffer.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buffer[:head_end]).split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(buffer) < head_end + length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    request = bytes(buffer[: head_end + length])
    del buffer[: head_end + length]
    return request


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@dataclass
class LossyProxy:
    upstream: tuple[str, int]
    lose: list[bytes] = field(default_factory=list)
    hold: list[bytes] = field(default_factory=list)
    held: list[tuple[bytes, bytes]] = field(default_factory=list)  # (prefix, request)
    seen: list[str] = field(default_factory=list)  # request lines, in arrival order, with what happened
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LossyProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._stop.set()
        _close(self._listener)

    def lose_answer(self, prefix: str) -> None:
        with self._lock:
            self.lose.append(prefix.encode())

    def hold_request(self, prefix: str) -> None:
        with self._lock:
            self.hold.append(prefix.encode())

    # ---- plumbing ------------------------------------------------------------------------------
    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _take(self, queue: list[bytes], request: bytes) -> bytes | None:
        with self._lock:
            for prefix in queue:
                if request.startswith(prefix):
                    queue.remove(prefix)
                    return prefix
        return None

    def _deliver_held(self, request: bytes) -> None:
        """A held request reaches the server before the next request it was held for."""
        with self._lock:
            due = [(p, r) for p, r in self.held if request.startswith(p)]
            for item in due:
                self.held.remove(item)
        for _prefix, held in due:
            late = socket.create_connection(self.upstream)
            try:
                late.sendall(held)
                late.recv(65536)  # the server answered: it has been applied
            finally:
                _close(late)
            self.seen.append(held.split(b"\r\n", 1)[0].decode() + " -> landed late")

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        dropping = threading.Event()

        def pump_back() -> None:
            while True:
                try:
                    data = upstream.recv(65536)
                except OSError:
                    break
                if not data:
                    break
                if dropping.is_set():  # the server answered: applied; the client never hears of it
                    break
                try:
                    client.sendall(data)
                except OSError:
                    break
            _close(client)
            _close(upstream)

        threading.Thread(target=pump_back, daemon=True).start()
        buffer = bytearray()
        try:
            while True:
                request = _read_request(client, buffer)
                if request is None:
                    break
                line = request.split(b"\r\n", 1)[0].decode()
                self._deliver_held(request)
                held_for = self._take(self.hold, request)
                if held_for is not None:
                    with self._lock:
                        self.held.append((held_for, request))
                    self.seen.append(line + " -> held")
                    break
                if self._take(self.lose, request) is not None:
                    dropping.set()
                    self.seen.append(line + " -> answer lost")
                else:
                    self.seen.append(line)
                upstream.sendall(request)
                if dropping.is_set():
                    return  # pump_back closes both ends once the server starts answering
        except OSError:
            pass
        _close(client)
        _close(upstream)
