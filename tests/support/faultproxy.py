"""A small HTTP-aware TCP proxy on loopback that injects faults into chosen requests.

Used instead of a fake Glance: the real Glance stays behind it, the proxy only breaks the
wire (reset after N body bytes, 503 with Retry-After, a stall, a slow link, a hook that can kill
the server, one body byte changed in flight, or a 410 once the body is read, as Glance answers
a PUT whose image changed status under it) for requests whose "METHOD PATH" matches.
Bounded: every fault fires `times` times.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from imgpipe_dev.localcloud import FAULT_HEADER


@dataclass
class Fault:
    match: str  # regex on "METHOD PATH"
    kind: str  # "reset" | "503" | "stall" | "hook" | "tamper" | "slow" | "gone"
    after: int = 0  # body bytes forwarded before a reset/hook, or the offset of the byte tamper flips
    times: int = 1
    seconds: float = 0.0  # stall length, or Retry-After for 503, or per MiB forwarded when slow
    hook: Callable[[], None] | None = None
    fired: int = 0


@dataclass
class FaultProxy:
    upstream: tuple[str, int]
    faults: list[Fault] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._server.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _pick(self, line: str) -> Fault | None:
        for fault in self.faults:
            if fault.fired < fault.times and re.search(fault.match, line):
                fault.fired += 1
                return fault
        return None

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.upstream, timeout=600)
        except OSError:
            client.close()  # server down: the client sees a reset, as with a real outage
            return
        threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                line = " ".join(head.split(b"\r\n", 1)[0].decode().split(" ")[:2])
                self.requests.append(line)
                length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1)) \
                    if re.search(rb"(?i)content-length:", head) else 0
                fault = self._pick(line)
                if fault and fault.kind == "503":
                    client.sendall(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: "
                                   + str(int(fault.seconds)).encode()
                                   + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                if fault and fault.kind == "gone":  # the body read (not forwarded), then 410
                    self._drain(client, buf, length)
                    client.sendall(b"HTTP/1.1 410 Gone\r\nContent-Type: text/plain\r\n"
                                   b"Content-Length: 4\r\nConnection: close\r\n\r\nGone")
                    return
                if fault and fault.kind == "stall":
                    time.sleep(fault.seconds)
                    return
                if fault:  # the server's access log shows what it answered to an injected fault
                    head += f"\r\n{FAULT_HEADER}: {fault.kind}".encode()
                upstream.sendall(head + b"\r\n\r\n")
                buf = self._forward_body(client, upstream, buf, length, fault)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    @staticmethod
    def _drain(client: socket.socket, buf: bytes, length: int) -> None:
        got = len(buf)
        while got < length:
            chunk = client.recv(1 << 20)
            if not chunk:
                raise OSError("client closed")
            got += len(chunk)

    def _forward_body(self, client: socket.socket, upstream: socket.socket, buf: bytes,
                      length: int, fault: Fault | None) -> bytes:
        sent = 0
        while sent < length:
            if not buf:
                buf = client.recv(1 << 20)
                if not buf:
                    raise OSError("client closed")
            piece, buf = buf[:length - sent], buf[length - sent:]
            if fault and fault.kind == "slow" and len(piece) > 1 << 16:
                piece, buf = piece[:1 << 16], piece[1 << 16:] + buf
            if fault and fault.kind == "slow":
                time.sleep(fault.seconds * len(piece) / (1 << 20))
            if fault and fault.kind in ("reset", "hook") and sent + len(piece) >= fault.after:
                upstream.sendall(piece[:max(0, fault.after - sent)])
                if fault.hook:
                    fault.hook()
                raise OSError("fault injected")
            if fault and fault.kind == "tamper" and sent <= fault.after < sent + len(piece):
                at = fault.after - sent
                piece = piece[:at] + bytes([piece[at] ^ 0xFF]) + piece[at + 1:]
            upstream.sendall(piece)
            sent += len(piece)
        return buf


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(1 << 20):
            dst.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass
