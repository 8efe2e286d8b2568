"""The scripted Responses API fake itself, over plain HTTP (no codex needed)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from .openai_server import OpenAIServer, slot_of, usage_for

TOOLS = [{"type": "function", "name": "exec_command", "parameters": {"type": "object"}}]


@pytest.fixture
def srv() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        yield server


def post(srv: OpenAIServer, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(srv.url + "/responses", data=json.dumps(body).encode(),
                                 method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def events(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in raw.decode().splitlines()
            if line.startswith("data: ")]


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def test_a_shell_call_then_text_by_slot_with_usage(srv: OpenAIServer) -> None:
    srv.script("MARK", [{"text": "on it", "bash": "git commit"}, {"text": "done"}])
    status, _, raw = post(srv, {"stream": True, "tools": TOOLS, "input": [user("MARK go")]})
    got = events(raw)
    assert status == 200 and got[0]["type"] == "response.created"
    assert got[-1]["type"] == "response.completed"
    assert got[-1]["response"]["usage"] == usage_for(0)
    [call] = [e["item"] for e in got if e["type"] == "response.output_item.done"
              and e["item"]["type"] == "function_call"]
    assert call["name"] == "exec_command" and json.loads(call["arguments"]) == {"cmd": "git commit"}
    history = [user("MARK go"), *[e["item"] for e in got if e["type"] ==
                                  "response.output_item.done"],
               {"type": "function_call_output", "call_id": call["call_id"], "output": "ok"}]
    assert slot_of(history) == 1
    _, _, raw = post(srv, {"stream": True, "tools": TOOLS, "input": history})
    deltas = [e["delta"] for e in events(raw) if e["type"] == "response.output_text.delta"]
    assert deltas == ["done"]
    assert [r["slot"] for r in srv.messages_requests()] == [0, 1]
    assert srv.saw("ok") and not srv.saw("never sent")


def test_a_429_has_an_openai_body_and_reset_headers_then_the_turn_plays(
        srv: OpenAIServer) -> None:
    srv.script("MARK", [{"error": 429, "retry_after": 7}, {"text": "after"}])
    status, headers, raw = post(srv, {"stream": True, "tools": TOOLS, "input": [user("MARK")]})
    assert status == 429 and json.loads(raw)["error"]["code"] == "rate_limit_exceeded"
    assert headers["retry-after"] == "7" and headers["x-ratelimit-reset-requests"] == "7s"
    status, _, raw = post(srv, {"stream": True, "tools": TOOLS, "input": [user("MARK")]})
    assert status == 200 and "after" in raw.decode()


def test_a_call_without_tools_is_a_side_call(srv: OpenAIServer) -> None:
    srv.script("MARK", [{"text": "main"}])
    _, _, raw = post(srv, {"stream": True, "input": [user("MARK title please")]})
    assert events(raw)[-1]["response"]["usage"] == usage_for(None)
    assert srv.messages_requests()[0]["conversation"] is None
