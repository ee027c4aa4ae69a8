"""A loopback TCP -> Docker unix socket forwarder that records every HTTP request line.

Running the CLI with `--docker-url tcp://127.0.0.1:PORT` through it shows how
many Engine API calls one invocation makes, and how many bytes the engine
sends back (which grows when a call lists containers), without patching the
tool or docker-py. A request is recorded before it is forwarded, so once the client
process has exited every request it made has been counted.

The tests use it too: as a tcp:// engine on another loopback address, and with
read_only=True as a socket proxy that lets only GET and HEAD through (403 else).
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
from collections.abc import Callable

DOCKER_SOCKET = "/var/run/docker.sock"
_REQUEST_LINE = re.compile(rb"^([A-Z]+) (\S+) HTTP/1\.[01]$")


class _LineScanner:
    """Finds request lines in one connection's client->engine byte stream."""

    def __init__(self, record: Callable[[str], None]) -> None:
        self._record = record
        self._pending = b""

    def feed(self, data: bytes) -> None:
        *lines, self._pending = (self._pending + data).split(b"\r\n")
        for line in lines:
            match = _REQUEST_LINE.match(line)
            if match:
                self._record(f"{match[1].decode()} {match[2].decode()}")


class CountingProxy:
    """Listens on 127.0.0.1:<ephemeral>; `take()` returns and clears what was seen."""

    def __init__(self, socket_path: str = DOCKER_SOCKET, host: str = "127.0.0.1", read_only: bool = False) -> None:
        self._socket_path = socket_path
        self._server = socket.create_server((host, 0))
        self.host = host
        self.port: int = self._server.getsockname()[1]
        self.read_only = read_only
        self.refused: list[str] = []
        self._lock = threading.Lock()
        self._requests: list[str] = []
        self._response_bytes = 0
        threading.Thread(target=self._accept_loop, name="counting-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def take(self) -> tuple[list[str], int]:
        """The request lines and the response bytes seen since the last call."""
        with self._lock:
            taken = self._requests, self._response_bytes
            self._requests, self._response_bytes = [], 0
        return taken

    def close(self) -> None:
        self._server.close()

    def _record(self, line: str) -> None:
        with self._lock:
            self._requests.append(line)

    def _count_response(self, data: bytes) -> None:
        with self._lock:
            self._response_bytes += len(data)

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        """Pipe both ways until both sides are done; count on the way in."""
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with client, upstream:
            upstream.connect(self._socket_path)
            back = threading.Thread(target=_pipe, args=(upstream, client, self._count_response), daemon=True)
            back.start()
            _pipe(client, upstream, self._gate(client))
            back.join()

    def _gate(self, client: socket.socket) -> Callable[[bytes], bool]:
        """Record request lines; when read-only, answer anything but GET/HEAD with 403."""
        scanner = _LineScanner(self._record)

        def observe(data: bytes) -> bool:
            scanner.feed(data)
            if self.read_only and not data.startswith((b"GET ", b"HEAD ")):
                self.refused.append(data.split(b"\r\n", 1)[0].decode(errors="replace"))
                body = b'{"message":"read-only proxy: only GET and HEAD"}'
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\n"
                               b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body))
                return False
            return True

        return observe


def _pipe(src: socket.socket, dst: socket.socket, observe: Callable[[bytes], bool | None] | None) -> None:
    """Copy src to dst until EOF (or until observe says False), then half-close dst."""
    try:
        while data := src.recv(65536):
            if observe is not None and observe(data) is False:
                break
            dst.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
