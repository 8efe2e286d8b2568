"""A scripted fake of the OpenAI Responses API, for driving the real Codex CLI offline.

Stdlib only; the script, matching and recording are those of `anthropic_server` (same
script format and `srv.script(match, turns)`), only the wire format differs. Run
in-process (``with OpenAIServer() as srv: srv.url``: the base URL, ending in ``/v1``) or::

    python -m tests.fakes.openai_server --port 8766 --script script.json [--log req.jsonl]

`POST /v1/responses` (``stream: true``) answers with server-sent events: ``response.created``,
``response.output_item.added`` / ``.done`` per output item (an assistant ``message`` whose
text comes as ``response.output_text.delta``, then a ``function_call`` for the shell tool),
``response.completed`` with ``usage``. A request is matched to the first conversation whose
``match`` is a substring of its ``instructions`` plus every user or developer message of its
``input`` (Codex sends the AGENTS.md instructions and the prompt as user messages). The slot
is the number of model responses already in ``input`` (each ``function_call`` item, and each
assistant message not followed by one), so a resumed conversation continues where it was.

Turn kinds: ``{"bash": "cmd"}`` calls the shell tool the request declares (``exec_command``
with ``{"cmd": ...}`` in codex 0.171; ``shell`` with an argv, ``shell_command`` with
``command`` in older ones), optionally after ``"text"``; ``{"text": "..."}``; ``{"error": 429,
"times": N, "retry_after": s}`` as in `anthropic_server`, with an OpenAI error body and the
``retry-after`` and ``x-ratelimit-reset-*`` headers. Requests without tools (Codex's title
call) get ``side_text`` and consume nothing.

Usage for slot t: ``input_tokens = 100 + t`` (of which ``cached_tokens = 50 + t``),
``output_tokens = 10 + t`` (``reasoning_tokens = t``), ``total_tokens`` their sum; side calls
1 and 1. Every request is recorded as in `anthropic_server`: its ``messages`` are the
``input`` items, its ``system`` the ``instructions``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from tests.fakes.anthropic_server import AnthropicServer, Turn, _Handler

SHELL_TOOLS = ("exec_command", "shell_command", "shell", "local_shell")
ERROR_CODES = {429: "rate_limit_exceeded", 500: "server_error", 503: "server_error",
               401: "invalid_api_key", 400: "invalid_request_error"}


def usage_for(slot: int | None) -> dict[str, Any]:
    """The usage figures reported for a slot (None: a side call)."""
    if slot is None:
        return {"input_tokens": 1, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 1, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 2}
    return {"input_tokens": 100 + slot, "input_tokens_details": {"cached_tokens": 50 + slot},
            "output_tokens": 10 + slot, "output_tokens_details": {"reasoning_tokens": slot},
            "total_tokens": 110 + 2 * slot}


def texts(item: dict[str, Any]) -> list[str]:
    """The texts of one input item: a message's parts, a tool call's output."""
    if item.get("type") == "function_call_output":
        out = item.get("output")
        return [out if isinstance(out, str) else json.dumps(out)]
    content = item.get("content")
    if isinstance(content, str):
        return [content]
    return [c.get("text", "") for c in content or [] if isinstance(c, dict)]


def slot_of(items: list[dict[str, Any]]) -> int:
    """How many model responses the history holds (see the module docstring)."""
    slot = 0
    for i, item in enumerate(items):
        if item.get("type") == "function_call":
            slot += 1
        elif item.get("type") == "message" and item.get("role") == "assistant":
            following = items[i + 1] if i + 1 < len(items) else {}
            slot += following.get("type") != "function_call"
    return slot


class OpenAIServer(AnthropicServer):
    """A threaded fake Responses API server holding a script of conversations."""

    @property
    def url(self) -> str:
        """The base URL for a provider's `base_url` (or OPENAI_BASE_URL)."""
        return f"http://{self.host}:{self.port}/v1"

    def _handler(self) -> type[_Handler]:
        return _ResponsesHandler

    def messages_requests(self) -> list[dict[str, Any]]:
        """Recorded POST /v1/responses requests."""
        return [r for r in list(self.requests) if r["path"] == "/v1/responses"]

    def user_texts(self, roles: tuple[str, ...] = ("user",)) -> list[str]:
        """Every text of input messages with these roles (tool outputs included when
        "tool" is among them), deduplicated, in order."""
        seen: dict[str, None] = {}
        for r in self.messages_requests():
            for item in r["messages"]:
                if item.get("role") in roles or (
                        "tool" in roles and item.get("type") == "function_call_output"):
                    seen.update(dict.fromkeys(texts(item)))
        return list(seen)

    def saw(self, needle: str) -> bool:
        """Whether needle reached the model: in an input message, a tool output or the
        instructions."""
        return any(needle in t for t in self.user_texts(("user", "developer", "tool"))) or any(
            needle in r["system"] for r in self.messages_requests())

    def _plan(self, body: dict[str, Any], rec: dict[str, Any]) -> Turn:
        if not body.get("tools"):
            return {"text": self.side_text, "side": True}
        items = [i for i in body.get("input") or [] if isinstance(i, dict)]
        slot = slot_of(items)
        rec["slot"] = slot
        asked = [t for i in items if i.get("type", "message") == "message"
                 and i.get("role") in ("user", "developer") for t in texts(i)]
        return self._pick(rec["system"] + "\n" + "\n".join(asked), slot, rec)


class _ResponsesHandler(_Handler):
    fake: OpenAIServer
    server_version = "fake-openai/1"

    def _base(self, body: dict[str, Any]) -> dict[str, Any]:
        rec = super()._base(body)
        rec.update({"system": str(body.get("instructions") or ""),
                    "messages": [i for i in body.get("input") or [] if isinstance(i, dict)],
                    "tools": [t.get("name") or t.get("type") for t in body.get("tools") or []
                              if isinstance(t, dict)]})
        return rec

    def do_POST(self) -> None:  # noqa: N802
        _, body = self._read()
        rec = self._base(body)
        if not rec["path"].endswith("/responses"):
            self.fake._record(rec)
            return self._json(200, {})
        rec["path"] = "/v1/responses"
        turn = self.fake._plan(body, rec)
        rec["reply"] = turn
        self.fake._record(rec)
        try:
            if "error" in turn:
                return self._error(turn)
            self._respond(turn, body, None if turn.get("side") else rec["slot"])
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _error(self, turn: Turn) -> None:
        code = int(turn["error"])
        headers: dict[str, str] = {}
        if code == 429:
            after = int(turn.get("retry_after", 1))
            headers.update({"retry-after": str(after),
                            "x-ratelimit-reset-requests": f"{after}s",
                            "x-ratelimit-reset-tokens": f"{after}s"})
        headers.update(turn.get("headers", {}))
        kind = ERROR_CODES.get(code, "server_error")
        message = turn.get("message") or f"fake error {code}"
        self._json(code, {"error": {"message": message, "type": kind, "param": None,
                                    "code": kind}}, headers)

    def _shell_call(self, turn: Turn, body: dict[str, Any]) -> dict[str, Any] | None:
        declared = [t.get("name") or t.get("type") for t in body.get("tools") or []
                    if isinstance(t, dict)]
        if "bash" not in turn and "tool" not in turn:
            return None
        if "tool" in turn:
            name, args = turn["tool"], turn.get("input") or {}
        else:
            name = next((n for n in SHELL_TOOLS if n in declared), "exec_command")
            args = {"exec_command": {"cmd": turn["bash"]},
                    "shell_command": {"command": turn["bash"]},
                    }.get(name, {"command": ["bash", "-lc", turn["bash"]]})
        call = f"call_fake_{time.monotonic_ns()}"
        return {"type": "function_call", "id": f"fc_{call}", "call_id": call, "name": name,
                "arguments": json.dumps(args), "status": "completed"}

    def _respond(self, turn: Turn, body: dict[str, Any], slot: int | None) -> None:
        rid = self.fake._next_id().replace("msg_", "resp_")
        items: list[dict[str, Any]] = []
        call = self._shell_call(turn, body)
        text = turn.get("text")
        if text is None and call is None:
            text = self.fake.default_text
        if text is not None:
            items.append({"type": "message", "id": f"msg_{rid}", "role": "assistant",
                          "status": "completed", "content": [
                              {"type": "output_text", "text": str(text), "annotations": []}]})
        if call:
            items.append(call)
        model = body.get("model") or "gpt-fake"
        response = {"id": rid, "object": "response", "created_at": int(time.time()),
                    "model": model, "status": "in_progress", "output": []}
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("x-request-id", f"req_fake_{time.monotonic_ns()}")
        self.end_headers()
        self._event("response.created", {"type": "response.created", "response": response})
        for index, item in enumerate(items):
            empty = {**item, "content": []} if item["type"] == "message" else item
            self._event("response.output_item.added", {
                "type": "response.output_item.added", "output_index": index, "item": empty})
            if item["type"] == "message":
                self._event("response.output_text.delta", {
                    "type": "response.output_text.delta", "item_id": item["id"],
                    "output_index": index, "content_index": 0,
                    "delta": item["content"][0]["text"]})
            self._event("response.output_item.done", {
                "type": "response.output_item.done", "output_index": index, "item": item})
        self._event("response.completed", {"type": "response.completed", "response": {
            **response, "status": "completed", "output": items, "usage": usage_for(slot)}})


def main(argv: list[str] | None = None) -> None:
    """Command line: serve a script file until interrupted."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--script", help="JSON script file")
    ap.add_argument("--log", help="append each recorded request as a JSON line here")
    args = ap.parse_args(argv)
    srv = OpenAIServer(args.host, args.port, log_path=args.log)
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
