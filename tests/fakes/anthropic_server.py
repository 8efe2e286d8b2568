"""A scripted fake of the Anthropic Messages API, for driving the real Claude Code CLI offline.

Stdlib only. Run in-process (``with AnthropicServer() as srv: srv.url``) or by hand::

    python -m tests.fakes.anthropic_server --port 8765 --script script.json [--log req.jsonl]

Script: ``{"conversations": [{"match": "...", "turns": [...]}, ...]}`` (or a bare list).
A request is matched to the first conversation whose ``match`` is a substring of its system
prompt + first user message text. The turn played is chosen statelessly: slot index = the number
of ``assistant`` messages in the request, so a resumed conversation continues where it was.
Turn kinds:

- ``{"bash": "cmd", "description": "..."}``: a ``Bash`` tool_use (stop_reason ``tool_use``);
  ``{"tool": "Name", "input": {...}}`` for any other tool. An optional ``"text"`` precedes it.
- ``{"text": "..."}``: text, stop_reason ``end_turn``.
- ``{"slow": seconds, "text": "..."}``: the text trickles out over that many seconds.
- ``{"error": 429|529|500|401|400, "times": N, "retry_after": s}``: an HTTP error with the proper
  Anthropic JSON body. An error turn is attached to the turn after it (same slot); it is played
  ``times`` times (default 1, counted per conversation) and then the slot's next turn plays.

Requests without ``tools`` (the CLI's side calls: titles, topics, quota probes) never match a
conversation nor consume turns: they get ``side_text`` (as a JSON object filling the properties
of ``output_config.format``'s schema when the call asks for ``json_schema`` output).
Unmatched requests and exhausted conversations get ``default_text`` with ``end_turn``.

Usage rule (every response, in ``message_start`` and again in ``message_delta``): for slot t,
``input_tokens = 100 + t``, ``output_tokens = 10 + t``, ``cache_creation_input_tokens = 1000 + t``,
``cache_read_input_tokens = 2000 + t``. Side calls report 1, 1, 0, 0. ``count_tokens`` answers
``{"input_tokens": len(request body) // 4}``. Any other path answers 200 ``{}``.

Every request is recorded (``srv.requests``): method, path, headers (lower-cased keys),
parsed body, system text, messages, model, tool names, stream flag, conversation, slot, reply.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

Turn = dict[str, Any]
ERRORS = {429: "rate_limit_error", 529: "overloaded_error", 500: "api_error",
          401: "authentication_error", 400: "invalid_request_error"}
ERROR_MESSAGES = {429: "Number of request tokens has exceeded your per-minute rate limit",
                  529: "Overloaded", 500: "Internal server error", 401: "invalid x-api-key",
                  400: "Invalid request"}


def _text_of(content: Any) -> list[str]:
    """Every text in a message content (str or blocks), tool_result contents included."""
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for block in content or []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            out.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            out.extend(_text_of(block.get("content")))
    return out


def usage_for(slot: int | None) -> dict[str, int]:
    """The usage figures reported for a slot (None: a side call)."""
    if slot is None:
        return {"input_tokens": 1, "output_tokens": 1, "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0}
    return {"input_tokens": 100 + slot, "output_tokens": 10 + slot,
            "cache_creation_input_tokens": 1000 + slot, "cache_read_input_tokens": 2000 + slot}


class AnthropicServer:
    """A threaded fake Messages API server holding a script of conversations."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 conversations: list[dict[str, Any]] | None = None,
                 side_text: str = "OK", default_text: str = "Done.",
                 log_path: str | Path | None = None) -> None:
        self.host, self.port = host, port
        self.side_text, self.default_text = side_text, default_text
        self.conversations: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.log_path = Path(log_path) if log_path else None
        self._lock = threading.Lock()
        self._error_plays: dict[tuple[str, int, int], int] = {}
        self._ids = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for conv in conversations or []:
            self.script(conv["match"], conv["turns"])

    # --- script ---------------------------------------------------------------------------
    def script(self, match: str, turns: list[Turn]) -> None:
        """Add a conversation, or replace the one with the same match (resets its error counts)."""
        with self._lock:
            self.conversations = [c for c in self.conversations if c["match"] != match]
            self.conversations.append({"match": match, "turns": list(turns)})
            self._error_plays = {k: v for k, v in self._error_plays.items() if k[0] != match}

    def load(self, path: str | Path) -> None:
        """Load conversations (and optional side_text/default_text) from a JSON file."""
        data = json.loads(Path(path).read_text())
        if isinstance(data, dict):
            self.side_text = data.get("side_text", self.side_text)
            self.default_text = data.get("default_text", self.default_text)
            data = data.get("conversations", [])
        for conv in data:
            self.script(conv["match"], conv["turns"])

    # --- lifecycle ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The base URL to put in ANTHROPIC_BASE_URL."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> AnthropicServer:
        """Serve in a daemon thread."""
        handler = type("Handler", (self._handler(),), {"fake": self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()
        return self

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class (the Responses API fake has its own)."""
        return _Handler

    def stop(self) -> None:
        """Stop serving."""
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> AnthropicServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- queries --------------------------------------------------------------------------
    def messages_requests(self) -> list[dict[str, Any]]:
        """Recorded POST /v1/messages requests."""
        return [r for r in list(self.requests) if r["path"] == "/v1/messages"]

    def conversation_requests(self, match: str) -> list[dict[str, Any]]:
        """Recorded requests matched to the conversation with this match."""
        return [r for r in self.messages_requests() if r["conversation"] == match]

    def user_texts(self, roles: tuple[str, ...] = ("user",)) -> list[str]:
        """Every text of messages with these roles in any request (tool_result texts
        included), deduplicated, in order. Claude Code also sends role "system" messages."""
        seen: dict[str, None] = {}
        for r in self.messages_requests():
            for m in r["messages"]:
                if m.get("role") in roles:
                    seen.update(dict.fromkeys(_text_of(m.get("content"))))
        return list(seen)

    def saw(self, needle: str) -> bool:
        """Whether needle reached the model: in a user or system message, or a system prompt."""
        return any(needle in t for t in self.user_texts(("user", "system"))) or any(
            needle in r["system"] for r in self.messages_requests())

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> Any:
        """Poll predicate(self) until truthy; raise TimeoutError."""
        deadline = time.monotonic() + timeout
        while not (value := predicate(self)):
            if time.monotonic() > deadline:
                raise TimeoutError("fake anthropic server: condition not met")
            time.sleep(0.05)
        return value

    # --- planning -------------------------------------------------------------------------
    def _plan(self, body: dict[str, Any], rec: dict[str, Any]) -> Turn:
        """Choose the reply for a messages request; fills rec's conversation/slot."""
        if not body.get("tools"):
            return {"text": self._side_text(body), "side": True}
        messages = body.get("messages") or []
        slot = sum(1 for m in messages if m.get("role") == "assistant")
        rec["slot"] = slot
        first = next((m for m in messages if m.get("role") == "user"), {})
        haystack = rec["system"] + "\n" + "\n".join(_text_of(first.get("content")))
        return self._pick(haystack, slot, rec)

    def _pick(self, haystack: str, slot: int, rec: dict[str, Any]) -> Turn:
        """The turn for `slot` of the first conversation whose match is in `haystack`
        (shared with the Responses API fake)."""
        with self._lock:
            conv = next((c for c in self.conversations if c["match"] in haystack), None)
            if conv is None:
                return {"text": self.default_text}
            rec["conversation"] = conv["match"]
            slots: list[list[tuple[int, Turn]]] = [[]]
            for i, turn in enumerate(conv["turns"]):
                slots[-1].append((i, turn))
                if "error" not in turn:
                    slots.append([])
            for i, turn in slots[slot] if slot < len(slots) else []:
                if "error" in turn:
                    key = (conv["match"], slot, i)
                    if self._error_plays.get(key, 0) < turn.get("times", 1):
                        self._error_plays[key] = self._error_plays.get(key, 0) + 1
                        return turn
                    continue
                return turn
        return {"text": self.default_text}

    def _side_text(self, body: dict[str, Any]) -> str:
        """side_text, or a JSON object of it when the call asks for a json_schema output."""
        fmt = (body.get("output_config") or {}).get("format") or {}
        if fmt.get("type") != "json_schema":
            return self.side_text
        props = (fmt.get("schema") or {}).get("properties") or {}
        fill = {"string": self.side_text, "boolean": False, "number": 0, "integer": 0}
        return json.dumps({k: fill.get(v.get("type"), None) for k, v in props.items()})

    def _next_id(self) -> str:
        with self._lock:
            self._ids += 1
            return f"msg_fake_{self._ids:05d}"

    def _record(self, rec: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(rec)
            if self.log_path:
                with self.log_path.open("a") as f:
                    f.write(json.dumps(rec) + "\n")


def _system_text(system: Any) -> str:
    if isinstance(system, str):
        return system
    return "\n".join(b.get("text", "") for b in system or [] if isinstance(b, dict))


class _Handler(BaseHTTPRequestHandler):
    fake: AnthropicServer
    server_version = "fake-anthropic/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _read(self) -> tuple[bytes, dict[str, Any]]:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {}
        return raw, body if isinstance(body, dict) else {}

    def _json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("request-id", f"req_fake_{time.monotonic_ns()}")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802
        self.fake._record(self._base(self._read()[1]))
        self._json(200, {})

    do_PUT = do_DELETE = do_PATCH = do_GET  # noqa: N815

    def do_HEAD(self) -> None:  # noqa: N802 - the CLI sends HEAD / at start-up
        self.fake._record(self._base({}))
        self.send_response(200)
        self.send_header("content-length", "0")
        self.end_headers()

    def _base(self, body: dict[str, Any]) -> dict[str, Any]:
        tools = body.get("tools") or []
        return {"time": time.time(), "method": self.command, "path": self.path.split("?")[0],
                "query": self.path.partition("?")[2],
                "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                "system": _system_text(body.get("system")), "messages": body.get("messages") or [],
                "model": body.get("model"), "tools": [t.get("name") for t in tools],
                "stream": bool(body.get("stream")), "conversation": None, "slot": None,
                "reply": None}

    def do_POST(self) -> None:  # noqa: N802
        raw, body = self._read()
        rec = self._base(body)
        if rec["path"].endswith("/v1/messages/count_tokens"):
            self.fake._record(rec)
            return self._json(200, {"input_tokens": len(raw) // 4})
        if not rec["path"].endswith("/v1/messages"):
            self.fake._record(rec)
            return self._json(200, {})
        rec["path"] = "/v1/messages"
        turn = self.fake._plan(body, rec)
        rec["reply"] = turn
        self.fake._record(rec)
        try:
            if "error" in turn:
                return self._error(turn)
            self._reply(turn, body, None if turn.get("side") else rec["slot"])
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _error(self, turn: Turn) -> None:
        code = int(turn["error"])
        kind = ERRORS.get(code, "api_error")
        headers = {"x-should-retry": "true"}
        if code == 429:
            after = int(turn.get("retry_after", 1))
            reset = (datetime.now(UTC) + timedelta(seconds=after)).strftime("%Y-%m-%dT%H:%M:%SZ")
            headers.update({"retry-after": str(after),
                            "anthropic-ratelimit-requests-reset": reset,
                            "anthropic-ratelimit-tokens-reset": reset,
                            "anthropic-ratelimit-input-tokens-reset": reset,
                            "anthropic-ratelimit-output-tokens-reset": reset})
        headers.update(turn.get("headers", {}))
        self._json(code, {"type": "error", "error": {
            "type": kind, "message": turn.get("message", ERROR_MESSAGES.get(code, "Error"))}},
            headers)

    def _reply(self, turn: Turn, body: dict[str, Any], slot: int | None) -> None:
        blocks: list[dict[str, Any]] = []
        if turn.get("text") is not None:
            blocks.append({"type": "text", "text": str(turn["text"])})
        tool = "Bash" if "bash" in turn else turn.get("tool")
        if tool:
            tool_input = turn.get("input") or {
                "command": turn["bash"], "description": turn.get("description", "Run a command")}
            blocks.append({"type": "tool_use", "id": f"toolu_fake_{time.monotonic_ns()}",
                           "name": tool, "input": tool_input})
        if not blocks:
            blocks.append({"type": "text", "text": self.fake.default_text})
        stop = "tool_use" if tool else "end_turn"
        usage = usage_for(slot)
        msg = {"id": self.fake._next_id(), "type": "message", "role": "assistant",
               "model": body.get("model") or "claude-fake", "content": blocks,
               "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not body.get("stream"):
            return self._json(200, msg)
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("request-id", f"req_fake_{time.monotonic_ns()}")
        self.end_headers()
        self._event("message_start", {"type": "message_start", "message": {
            **msg, "content": [], "stop_reason": None}})
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                    "content_block": {"type": "text", "text": ""}})
                self._trickle(i, block["text"], float(turn.get("slow", 0)))
            else:
                self._event("content_block_start", {"type": "content_block_start", "index": i,
                                                    "content_block": {**block, "input": {}}})
                self._event("content_block_delta", {"type": "content_block_delta", "index": i,
                            "delta": {"type": "input_json_delta",
                                      "partial_json": json.dumps(block["input"])}})
            self._event("content_block_stop", {"type": "content_block_stop", "index": i})
        self._event("message_delta", {"type": "message_delta", "usage": usage,
                                      "delta": {"stop_reason": stop, "stop_sequence": None}})
        self._event("message_stop", {"type": "message_stop"})

    def _trickle(self, index: int, text: str, seconds: float) -> None:
        """Send text as text_deltas; with seconds > 0, spread over that long."""
        if seconds <= 0:
            chunks = [text]
        else:
            n = max(1, min(len(text), int(seconds * 4)))
            size = -(-len(text) // n) or 1
            chunks = [text[i:i + size] for i in range(0, len(text), size)] or [""]
        for chunk in chunks:
            if seconds > 0:
                time.sleep(seconds / len(chunks))
            self._event("content_block_delta", {"type": "content_block_delta", "index": index,
                                                "delta": {"type": "text_delta", "text": chunk}})

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


def main(argv: list[str] | None = None) -> None:
    """Command line: serve a script file until interrupted."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", help="JSON script file")
    ap.add_argument("--log", help="append each recorded request as a JSON line here")
    args = ap.parse_args(argv)
    srv = AnthropicServer(args.host, args.port, log_path=args.log)
    if args.script:
        srv.load(args.script)
    srv.start()
    print(srv.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


if __name__ == "__main__":
    main()
