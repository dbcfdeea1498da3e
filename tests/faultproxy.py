"""A small HTTP fault-injection forwarder on loopback, for reliability tests.

``FaultProxy(upstream_url, Faults(rate=0.3, seed=1))`` listens on ``127.0.0.1:<free port>`` and
forwards each request to ``upstream_url``; with probability ``rate`` a request instead suffers
one fault drawn from ``kinds``:

- ``drop``      close the connection without any answer
- ``truncate``  forward, but cut the body off halfway (with the full ``Content-Length``)
- ``delay``     wait ``delay_s`` then forward normally
- ``429`` / ``500`` / ``502`` / ``503`` / ``504``   answer that status (429 with ``Retry-After: 0``)

The RNG is seeded. ``max_consecutive`` bounds how often the *same* request (method, path,
query, ``Range`` and body) is faulted in a row, so a client with more retries than that always
gets through: the proxy tests retry logic, not luck. ``max_consecutive=None`` never lets a
request through when ``rate=1``.

Usable as a context manager; ``proxy.url`` is the forwarding base URL; ``proxy.stats`` counts
requests and faults by kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import random
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULT_KINDS = ("drop", "truncate", "delay", "429", "500", "502", "503", "504")
HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


@dataclass
class Faults:
    rate: float = 0.0
    kinds: tuple[str, ...] = ("drop", "truncate", "delay", "429", "500", "503")
    seed: int = 0
    delay_s: float = 0.05
    max_consecutive: int | None = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("fault rate must be within [0, 1]")
        bad = [k for k in self.kinds if k not in FAULT_KINDS]
        if bad:
            raise ValueError(f"unknown fault kinds {bad}; known: {FAULT_KINDS}")


@dataclass
class _State:
    faults: Faults
    rng: random.Random
    lock: threading.Lock = field(default_factory=threading.Lock)
    streak: dict[str, int] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)

    def decide(self, key: str) -> str | None:
        f = self.faults
        with self.lock:
            self.stats["requests"] += 1
            n = self.streak.get(key, 0)
            fault = None
            allowed = f.rate > 0 and (f.max_consecutive is None or n < f.max_consecutive)
            if allowed and self.rng.random() < f.rate:
                fault = self.rng.choice(f.kinds)
            if fault is None:
                self.streak.pop(key, None)
                self.stats["passed"] += 1
            else:
                self.streak[key] = n + 1
                self.stats[fault] += 1
                self.stats["faulted"] += 1
            return fault


class FaultProxy:
    """Forward ``127.0.0.1:port`` to ``upstream`` with injected faults (see module doc)."""

    def __init__(self, upstream: str, faults: Faults | None = None, timeout: float = 30.0):
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or 80
        self.upstream_prefix = parts.path.rstrip("/")
        self.state = _State(faults or Faults(), random.Random((faults or Faults()).seed))
        self.timeout = timeout
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.upstream_prefix}"

    @property
    def stats(self) -> Counter[str]:
        return self.state.stats

    def set_faults(self, faults: Faults) -> None:
        with self.state.lock:
            self.state.faults = faults
            self.state.rng = random.Random(faults.seed)
            self.state.streak.clear()
            self.state.stats.clear()

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def _serve(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                key = "|".join(
                    [
                        self.command,
                        self.path,
                        self.headers.get("Range", ""),
                        hashlib.sha1(body).hexdigest(),
                    ]
                )
                fault = proxy.state.decide(key)
                if fault == "drop":
                    self._drop()
                    return
                if fault in ("429", "500", "502", "503", "504"):
                    msg = f'{{"code": "Injected", "description": "injected {fault}"}}'.encode()
                    self.send_response(int(fault))
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    if fault == "429":
                        self.send_header("Retry-After", "0")
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(msg)
                    return
                if fault == "delay":
                    time.sleep(proxy.state.faults.delay_s)
                try:
                    status, reason, headers, data = self._forward(body)
                except OSError as exc:
                    self.send_error(502, f"upstream unreachable: {exc}")
                    return
                self.send_response(status, reason)
                for k, v in headers:
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                length = len(data)
                if self.command == "HEAD":  # no body: keep the upstream's length
                    length = int(dict((k.lower(), v) for k, v in headers).get("content-length", 0))
                self.send_header("Content-Length", str(length))
                self.send_header("Connection", "close")
                self.end_headers()
                if self.command == "HEAD":
                    return
                if fault == "truncate" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self._drop()
                    return
                self.wfile.write(data)

            def _drop(self) -> None:
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.shutdown(socket.SHUT_RDWR)

            def _forward(self, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=proxy.timeout
                )
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                    # keep the client's Host: the upstream builds its links (next page,
                    # self) from it, so they keep pointing at the proxy
                    headers["Host"] = self.headers.get("Host", f"127.0.0.1:{proxy.port}")
                    headers["Accept-Encoding"] = "identity"
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    return resp.status, resp.reason, resp.getheaders(), data
                finally:
                    conn.close()

            do_GET = _serve
            do_POST = _serve
            do_HEAD = _serve
            do_PUT = _serve
            do_DELETE = _serve
            do_OPTIONS = _serve

        return Handler
