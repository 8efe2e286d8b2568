"""The dashboard as a small read-only web page: `sol up --web ADDR` (a child of the
prefect) and `sol dashboard --web ADDR` serve it.

It shows the board (daemon/board.py, the one view model `sol status` renders) plus the
throughput metrics, so the page and the terminal never disagree. One `Feed` thread owns
the store connection: it stats sol.db and its WAL every half second and rebuilds the
board's JSON only when they changed, so any number of open pages costs one reader.
The page gets it at /api/board and then live from /api/stream (server-sent events).

Read-only and private by construction: GET only (anything else 405); a random token on
every request (403 without it), printed at start and kept in run/web.url (0600), never on
a command line; loopback only unless asked (`--allow-remote`); the page is one shipped
file with no external assets, under a Content-Security-Policy that runs only its own
script (a nonce per response), and inserts every text with textContent.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from loguru import logger

from reconciler.core.errors import SolError
from reconciler.core.home import Home, private
from reconciler.daemon.board import metrics, snapshot
from reconciler.daemon.child import heartbeat_interval
from reconciler.daemon.procs import die_with_parent, setup_logging
from reconciler.daemon.watch import touch
from reconciler.drivers.sphere import Sphere

PAGE = Path(__file__).resolve().parent.parent / "data" / "dashboard.html"
CHECK_EVERY = 0.5       # seconds between two stats of the store's files
RESYNC = 15.0           # rebuild anyway: daemon health ages, a commit a stat cannot tell
KEEPALIVE = 15.0        # a comment on an idle stream, so proxies and browsers keep it
EVENTS = 50
URL_FILE = "web.url"
HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
           "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}


# ---- the address ---------------------------------------------------------------------


def parse_address(address: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """HOST:PORT (or PORT, or [V6]:PORT) as (host, port); a host that is not loopback is
    refused unless `allow_remote`: the page shows titles, messages and costs."""
    host, colon, port_text = address.strip().rpartition(":")
    if not colon:
        host, port_text = "", address.strip()
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise SolError(f"web address {address!r} is not HOST:PORT (e.g. 127.0.0.1:8080, "
                       "port 0 picks a free one)") from None
    if not 0 <= port <= 65535:
        raise SolError(f"web port {port} is out of range 0-65535")
    if not allow_remote and not _loopback(host):
        raise SolError(f"refusing to serve the dashboard on {host}: it is not a loopback "
                       "address, so other machines could read it; use 127.0.0.1 (and an "
                       "SSH tunnel), or pass --allow-remote if you mean it")
    return host, port


def _loopback(host: str) -> bool:
    """Every address the host name resolves to is loopback (0.0.0.0 is every address)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(found) and all(ipaddress.ip_address(str(f[4][0]).split("%")[0]).is_loopback
                               for f in found)


def _url(host: str, port: int, token: str) -> str:
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/?token={token}"


def previous(url_file: Path | None) -> tuple[int, str] | None:
    """(port, token) of the URL a killed server of this sphere left: a restarted child
    serves the same URL, so an open page goes on working."""
    if url_file is None:
        return None
    try:
        parts = urlsplit(url_file.read_text().strip())
        token = parse_qs(parts.query)["token"][0]
        return int(parts.port or 0), token
    except (OSError, KeyError, IndexError, ValueError):
        return None


# ---- the feed ------------------------------------------------------------------------


def _stamp(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    found = []
    for path in paths:
        try:
            st = path.stat()
            found.append((st.st_mtime_ns, st.st_size))
        except OSError:
            found.append((0, 0))
    return tuple(found)


class Feed:
    """The board as JSON, rebuilt in one thread when the store's files change; readers
    wait on `latest` for a version newer than the one they have."""

    def __init__(self, home: Home, interval: float = CHECK_EVERY) -> None:
        self.home, self.interval = home, interval
        self.version, self.body = 0, b""
        self.stopped = threading.Event()
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="sol-web-feed", daemon=True)

    def start(self) -> Feed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        with self._changed:
            self._changed.notify_all()
        self._thread.join(timeout=10)

    def latest(self, after: int = 0, timeout: float | None = None) -> tuple[int, bytes]:
        """The newest (version, body), once there is one newer than `after` (or the
        timeout or a stop passes: then the same version again)."""
        with self._changed:
            self._changed.wait_for(lambda: self.version > after or self.stopped.is_set(),
                                   timeout)
            return self.version, self.body

    def _run(self) -> None:
        sphere = None
        seen: tuple[tuple[int, int], ...] | None = None
        built = 0.0
        try:
            while not self.stopped.is_set():
                if sphere is None:
                    sphere = self._open()
                stamp = _stamp((self.home.db, self.home.db.with_name("sol.db-wal")))
                if sphere is not None and (stamp != seen or time.monotonic() - built > RESYNC):
                    seen, built = stamp, time.monotonic()
                    self._publish(self._build(sphere))
                self.stopped.wait(self.interval)
        finally:
            if sphere is not None:
                sphere.close()

    def _open(self) -> Sphere | None:
        try:
            return Sphere(self.home)
        except SolError as exc:
            self._publish({"error": exc.message})
            return None

    def _build(self, sphere: Sphere) -> dict[str, Any]:
        try:
            board = snapshot(sphere, events=EVENTS)
            return {"board": board.to_json(), "metrics": metrics(sphere.store, board.at)}
        except SolError as exc:  # the store busy or unreadable: say so, keep serving
            return {"error": exc.message, "at": time.time()}

    def _publish(self, data: dict[str, Any]) -> None:
        body = json.dumps(data, default=str, separators=(",", ":")).encode()
        with self._changed:
            if body == self.body:
                return
            self.version, self.body = self.version + 1, body
            self._changed.notify_all()


# ---- the server ----------------------------------------------------------------------


class WebServer(ThreadingHTTPServer):
    """The HTTP server with what its handlers need: the token, the feed, the page."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, host: str, port: int, token: str, feed: Feed) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.token, self.feed = token, feed
        self.page = PAGE.read_text()
        super().__init__((host, port), Handler)
        self.url = _url(host, self.server_address[1], token)

    def close(self) -> None:
        """Stop serving and end the open streams."""
        self.feed.stop()
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: WebServer
    server_version = "sol"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = urlsplit(self.path)
        given = (parse_qs(parts.query).get("token") or [""])[0]
        if not hmac.compare_digest(given.encode(), self.server.token.encode()):
            self._send(403, b"a valid token is required: use the URL sol printed\n",
                       "text/plain; charset=utf-8")
            return
        if parts.path == "/":
            nonce = secrets.token_urlsafe(16)
            body = self.server.page.replace("{{NONCE}}", nonce).encode()
            self._send(200, body, "text/html; charset=utf-8", csp=(
                f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"))
        elif parts.path == "/api/board":
            self._send(200, self.server.feed.latest(0, timeout=10)[1],
                       "application/json")
        elif parts.path == "/api/stream":
            self._stream()
        else:
            self._send(404, b"not found\n", "text/plain; charset=utf-8")

    def __getattr__(self, name: str) -> Callable[[], None]:
        """Every other method (POST, PUT, DELETE, HEAD, ...): the page is read-only."""
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _not_allowed(self) -> None:
        self._send(405, b"read-only: GET only\n", "text/plain; charset=utf-8",
                   extra={"Allow": "GET"})

    def _send(self, code: int, body: bytes, kind: str, *, csp: str = "default-src 'none'",
              extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        for name, value in {**HEADERS, "Content-Security-Policy": csp,
                            "Content-Type": kind, "Content-Length": str(len(body)),
                            **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self) -> None:
        """Server-sent events: the board now, again on each change, a comment when idle."""
        self.send_response(200)
        for name, value in {**HEADERS, "Content-Security-Policy": "default-src 'none'",
                            "Content-Type": "text/event-stream", "Connection": "close"
                            }.items():
            self.send_header(name, value)
        self.end_headers()
        self.close_connection = True
        feed, version = self.server.feed, 0
        try:
            while not feed.stopped.is_set():
                now, body = feed.latest(version, timeout=KEEPALIVE)
                if now > version:
                    version = now
                    self.wfile.write(b"event: board\ndata: " + body + b"\n\n")
                else:
                    self.wfile.write(b": keepalive\n\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            return

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        """Not logged: every request line carries the token."""


def start(home: Home, address: str, *, allow_remote: bool = False,
          url_file: Path | None = None) -> WebServer:
    """Bind and serve in a thread; the caller closes it. `url_file` keeps the URL
    (0600) and, after a kill, gives a restarted server the same port and token."""
    host, port = parse_address(address, allow_remote=allow_remote)
    before = previous(url_file)
    token = before[1] if before else secrets.token_urlsafe(24)
    feed = Feed(home).start()
    try:
        server = _bind(host, port, before[0] if before and not port else 0, token, feed)
    except BaseException:
        feed.stop()
        raise
    if url_file is not None:
        tmp = url_file.with_name(f".{url_file.name}.tmp")
        with contextlib.suppress(OSError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(server.url + "\n")
        private(tmp)
        tmp.replace(url_file)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                     name="sol-web", daemon=True).start()
    return server


def _bind(host: str, port: int, again: int, token: str, feed: Feed) -> WebServer:
    """Bind HOST:PORT; with port 0, the port a killed server had if it is free."""
    try:
        if again:
            with contextlib.suppress(OSError):
                return WebServer(host, again, token, feed)
        return WebServer(host, port, token, feed)
    except OSError as exc:
        raise SolError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror}; "
                       "pick another port (0 picks a free one)") from exc


def serve(home: Home, address: str, *, allow_remote: bool = False,
          ready: Callable[[str], None] | None = None, url_file: Path | None = None) -> None:
    """Serve the page until SIGTERM or SIGINT; `ready(url)` once it answers (default:
    print the URL)."""
    stop = threading.Event()
    server = start(home, address, allow_remote=allow_remote, url_file=url_file)
    olds = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        (ready or print)(server.url)
        stop.wait()
    finally:
        for signum, old in olds.items():
            signal.signal(signum, old)
        server.close()
        if url_file is not None:
            with contextlib.suppress(OSError):
                url_file.unlink()


# ---- the prefect's child -------------------------------------------------------------


def run_child(address: str, allow_remote: bool) -> int:
    """`python -m reconciler.daemon.web ADDR [--allow-remote]`, started by the prefect:
    serve, beat the heartbeat the prefect checks, stop with it."""
    home = Home.from_env()
    die_with_parent()
    setup_logging(home.logs / "web.log")
    pid_file = home.run / "web.pid"
    pid_file.write_text(f"{os.getpid()}\n")
    beat = threading.Event()

    def heartbeat() -> None:
        while not beat.wait(heartbeat_interval()):
            touch(home.run / "web.heartbeat")

    touch(home.run / "web.heartbeat")
    threading.Thread(target=heartbeat, name="sol-web-heartbeat", daemon=True).start()
    try:
        serve(home, address, allow_remote=allow_remote, url_file=home.run / URL_FILE,
              ready=lambda url: logger.info("dashboard web page at {addr}",
                                            addr=url.split("?", 1)[0]))
    except SolError as exc:
        logger.error("{err}", err=exc.message)
        return exc.exit_code
    finally:
        beat.set()
        with contextlib.suppress(OSError):
            pid_file.unlink()
    return 0


def main(argv: Sequence[str]) -> int:
    if len(argv) in (1, 2) and argv[1:] in ([], ["--allow-remote"]):
        return run_child(argv[0], allow_remote=len(argv) == 2)
    print("usage: python -m reconciler.daemon.web ADDR [--allow-remote]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
