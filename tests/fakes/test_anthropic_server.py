"""The scripted Anthropic fake itself, over plain HTTP (no claude needed)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from .anthropic_server import AnthropicServer, main, usage_for

TOOLS = [{"name": "Bash", "input_schema": {"type": "object"}}]


@pytest.fixture
def srv() -> Iterator[AnthropicServer]:
    with AnthropicServer() as server:
        yield server


def post(srv: AnthropicServer, path: str, body: dict[str, Any],
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(srv.url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"content-type": "application/json",
                                          "x-api-key": "sk-ant-test-key", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def sse(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in raw.decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in chunk.splitlines() if ": " in line)
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def ask(prompt: str, history: list[dict[str, Any]] | None = None, stream: bool = True,
        tools: list[dict[str, Any]] | None = TOOLS) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "claude-test", "max_tokens": 100, "stream": stream,
                            "system": [{"type": "text", "text": "You are a fake."}],
                            "messages": [{"role": "user", "content": prompt}, *(history or [])]}
    if tools:
        body["tools"] = tools
    return body


def assistant_turns(n: int) -> list[dict[str, Any]]:
    """n assistant/user exchanges to follow the first user message."""
    out: list[dict[str, Any]] = []
    for i in range(n):
        out += [{"role": "assistant", "content": [{"type": "text", "text": f"a{i}"}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"t{i}",
                                              "content": f"RESULT-{i}"}]}]
    return out


def test_streamed_text_turn(srv: AnthropicServer) -> None:
    srv.script("ALPHA", [{"text": "hello there"}])
    status, headers, raw = post(srv, "/v1/messages?beta=true", ask("ALPHA go"))
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = sse(raw)
    names = [e for e, _ in events]
    assert names == ["message_start", "content_block_start", "content_block_delta",
                     "content_block_stop", "message_delta", "message_stop"]
    text = "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta")
    assert text == "hello there"
    delta = dict(events)["message_delta"]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"] == usage_for(0) == {
        "input_tokens": 100, "output_tokens": 10, "cache_creation_input_tokens": 1000,
        "cache_read_input_tokens": 2000}
    assert dict(events)["message_start"]["message"]["usage"] == usage_for(0)


def test_bash_tool_use_turn_and_stateless_index(srv: AnthropicServer) -> None:
    srv.script("BETA", [{"bash": "echo hi > f.txt"}, {"text": "second"}, {"text": "third"}])
    events = sse(post(srv, "/v1/messages", ask("BETA go"))[2])
    start = dict(events)["content_block_start"]["content_block"]
    assert start["type"] == "tool_use" and start["name"] == "Bash"
    partial = "".join(d["delta"]["partial_json"] for e, d in events
                      if e == "content_block_delta")
    assert json.loads(partial)["command"] == "echo hi > f.txt"
    assert dict(events)["message_delta"]["delta"]["stop_reason"] == "tool_use"
    # Turn index = assistant messages in the request: replaying is stateless.
    for _ in range(2):
        body = json.loads(post(srv, "/v1/messages", ask("BETA go", assistant_turns(2),
                                                        stream=False))[2])
        assert body["content"][0]["text"] == "third"
        assert body["usage"] == usage_for(2)
    body = json.loads(post(srv, "/v1/messages", ask("BETA go", assistant_turns(1),
                                                    stream=False))[2])
    assert body["content"][0]["text"] == "second" and body["stop_reason"] == "end_turn"
    exhausted = json.loads(post(srv, "/v1/messages", ask("BETA go", assistant_turns(5),
                                                         stream=False))[2])
    assert exhausted["content"][0]["text"] == srv.default_text
    assert [r["slot"] for r in srv.conversation_requests("BETA")] == [0, 2, 2, 1, 5]


def test_side_calls_do_not_consume_turns(srv: AnthropicServer) -> None:
    srv.script("GAMMA", [{"text": "scripted"}])
    side = json.loads(post(srv, "/v1/messages", ask("GAMMA title?", tools=None,
                                                    stream=False))[2])
    assert side["content"][0]["text"] == srv.side_text and side["usage"] == usage_for(None)
    schema = {"type": "json_schema", "schema": {"properties": {"title": {"type": "string"}}}}
    titled = json.loads(post(srv, "/v1/messages", {**ask("GAMMA", tools=None, stream=False),
                                                   "output_config": {"format": schema}})[2])
    assert json.loads(titled["content"][0]["text"]) == {"title": srv.side_text}
    main_call = json.loads(post(srv, "/v1/messages", ask("GAMMA go", stream=False))[2])
    assert main_call["content"][0]["text"] == "scripted"
    assert len(srv.conversation_requests("GAMMA")) == 1
    unmatched = json.loads(post(srv, "/v1/messages", ask("nobody", stream=False))[2])
    assert unmatched["content"][0]["text"] == srv.default_text


@pytest.mark.parametrize(("code", "kind"), [(429, "rate_limit_error"),
                                            (529, "overloaded_error"), (500, "api_error")])
def test_error_turns_play_times_then_fall_through(srv: AnthropicServer, code: int,
                                                  kind: str) -> None:
    srv.script("DELTA", [{"error": code, "times": 3}, {"text": "recovered"}])
    for _ in range(3):
        status, headers, raw = post(srv, "/v1/messages", ask("DELTA go"))
        assert status == code
        assert json.loads(raw) == {"type": "error", "error": {"type": kind,
                                                              "message": json.loads(raw)
                                                              ["error"]["message"]}}
        if code == 429:
            assert headers["retry-after"] == "1"
            assert "anthropic-ratelimit-requests-reset" in headers
    status, _, raw = post(srv, "/v1/messages", ask("DELTA go", stream=False))
    assert status == 200 and json.loads(raw)["content"][0]["text"] == "recovered"
    srv.script("DELTA", [{"error": code}, {"text": "again"}])  # replacing resets the count
    assert post(srv, "/v1/messages", ask("DELTA go"))[0] == code


def test_slow_stream_trickles(srv: AnthropicServer) -> None:
    srv.script("SLOW", [{"slow": 0.5, "text": "abcdefgh"}])
    t0 = time.monotonic()
    events = sse(post(srv, "/v1/messages", ask("SLOW"))[2])
    assert time.monotonic() - t0 >= 0.45
    deltas = [d["delta"]["text"] for e, d in events if e == "content_block_delta"]
    assert len(deltas) > 1 and "".join(deltas) == "abcdefgh"


def test_count_tokens_other_paths_and_recording(srv: AnthropicServer) -> None:
    srv.script("EPS", [{"text": "ok"}])
    status, _, raw = post(srv, "/v1/messages/count_tokens", ask("EPS"))
    assert status == 200 and json.loads(raw)["input_tokens"] > 0
    assert post(srv, "/api/whatever", {})[0] == 200
    with urllib.request.urlopen(srv.url + "/", timeout=5) as resp:
        assert resp.status == 200
    head = urllib.request.Request(srv.url + "/", method="HEAD")  # claude's start-up probe
    with urllib.request.urlopen(head, timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b""
    history = [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash",
                                                  "input": {"command": "ls"}}]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                             "content": [{"type": "text", "text": "OUT-42"}]}]},
               {"role": "system", "content": "hook said SYS-7"}]
    post(srv, "/v1/messages", ask("EPS marker-99", history), headers={"x-app": "cli"})
    last = srv.requests[-1]
    assert last["path"] == "/v1/messages" and last["model"] == "claude-test"
    assert last["headers"]["x-api-key"] == "sk-ant-test-key" and last["stream"] is True
    assert last["tools"] == ["Bash"] and last["system"] == "You are a fake."
    assert last["conversation"] == "EPS" and last["slot"] == 1
    assert {"EPS marker-99", "OUT-42"} <= set(srv.user_texts())
    assert srv.saw("SYS-7") and srv.saw("You are a fake") and not srv.saw("nowhere")
    assert [(r["method"], r["path"]) for r in srv.requests][:4] == [
        ("POST", "/v1/messages/count_tokens"), ("POST", "/api/whatever"), ("GET", "/"),
        ("HEAD", "/")]


def test_script_file_and_log(tmp_path: Any) -> None:
    script = tmp_path / "s.json"
    script.write_text(json.dumps({"side_text": "side", "conversations": [
        {"match": "ZETA", "turns": [{"tool": "Read", "input": {"file_path": "/x"}}]}]}))
    log = tmp_path / "log.jsonl"
    with AnthropicServer(log_path=log) as srv:
        srv.load(script)
        body = json.loads(post(srv, "/v1/messages", ask("ZETA", stream=False))[2])
        assert body["content"][0] == {**body["content"][0], "name": "Read",
                                      "input": {"file_path": "/x"}}
    assert json.loads(log.read_text().splitlines()[0])["conversation"] == "ZETA"
    with pytest.raises(SystemExit):
        main(["--help"])
