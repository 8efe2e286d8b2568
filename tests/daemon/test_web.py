"""The dashboard's web page (issue 15): a real server on a real sphere store, read by
urllib and by Debian's headless chromium through selenium, and `sol up --web` as the
prefect's supervised child.

Run as a script to remake the README's screenshot: `PYTHONPATH=tests:tests/daemon
.venv/bin/python tests/daemon/test_web.py docs/img/dashboard-web.png`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

import pytest
from conftest import make_repo, poll
from helpers import world_yaml, writ_yaml, write_specs

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.store import Store
from reconciler.daemon.procs import read_pid
from reconciler.daemon.web import WebServer, parse_address, start
from reconciler.drivers.sphere import Sphere
from reconciler.specs import record as recording
from reconciler.specs.manifests import validate

CHROMEDRIVER, CHROMIUM = Path("/usr/bin/chromedriver"), Path("/usr/bin/chromium")
LIVE = 2.0          # the page shows a change within this many seconds (the bound)
TRICK = "bad \x1b]0;pwned\x07 <img src=x onerror=window.pwned=1>"


def seed(home: Home, base: Path) -> None:
    """A world `shop` with a caravan launch: [schema] -> [api, ui] -> [docs] (api and docs
    also dependsOn), two writs outside it (after-loose dependsOn loose), a title and a
    message that try to be markup and terminal controls, and a day of landings."""
    repo = make_repo(base / "source")
    caravan = json.dumps({
        "apiVersion": "sol/v1", "kind": "Caravan",
        "metadata": {"name": "launch", "world": "shop"},
        "spec": {"phases": [["schema"], ["api", "ui"], ["docs"]]}}) + "\n"
    docs = [world_yaml("shop", repo), writ_yaml("schema", "shop", title="Add the schema"),
            writ_yaml("api", "shop", title="Serve the API", extra="dependsOn: [schema]"),
            writ_yaml("ui", "shop", title="Page <script>window.pwned=1</script>"),
            writ_yaml("docs", "shop", title="Document it", extra="dependsOn: [api]"),
            writ_yaml("loose", "shop", title="Tidy the logs"),
            writ_yaml("after-loose", "shop", title="Rotate them", extra="dependsOn: [loose]"),
            caravan]
    sphere = Sphere(home)
    try:
        recording.record(sphere, validate([write_specs(base / "specs", *docs)]))
        store = sphere.store
        store.set_status(("Writ", "shop", "schema"), phase="Merged", attempt=1)
        store.set_status(("Writ", "shop", "api"), phase="Working", agent="ember", attempt=2)
        store.set_status(("Writ", "shop", "ui"), message=TRICK)
        for i in range(5):
            store.event("merged", kind="Writ", world="shop", name="schema", message="landed")
            store.event("gate-passed", kind="Writ", world="shop", name="schema",
                        message="gate test passed", seconds=30.0 + i)
        store.event("sent-back", kind="Writ", world="shop", name="api", message="sent back")
    finally:
        sphere.close()


def set_phase(home: Home, name: str, phase: str) -> None:
    store = Store(home.db)
    try:
        store.set_status(("Writ", "shop", name), phase=phase)
    finally:
        store.close()


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method),
                                    timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def at(server: WebServer, path: str, token: str | None = None) -> str:
    root = server.url.split("?", 1)[0].rstrip("/")
    return f"{root}{path}?token={server.token if token is None else token}"


@pytest.fixture
def seeded(sol_home: Home, tmp_path: Path) -> Home:
    seed(sol_home, tmp_path)
    return sol_home


@pytest.fixture
def served(seeded: Home) -> Iterator[WebServer]:
    server = start(seeded, "127.0.0.1:0")
    try:
        yield server
    finally:
        server.close()


# ---- the server ----------------------------------------------------------------------


def test_every_request_needs_the_token_and_nothing_writes(served: WebServer) -> None:
    assert served.url.startswith("http://127.0.0.1:") and "?token=" in served.url
    assert get(at(served, "/", token=""))[0] == 403
    wrong = ("y" if served.token[0] == "x" else "x") + served.token[1:]
    assert get(at(served, "/api/board", token=wrong))[0] == 403
    assert get(served.url.split("?")[0])[0] == 403
    for method in ("POST", "PUT", "DELETE"):
        code, headers, _ = get(at(served, "/api/board"), method)
        assert code == 405 and headers["Allow"] == "GET", method
    assert get(at(served, "/nothing"))[0] == 404
    code, headers, body = get(served.url)
    assert code == 200 and b"<title>sol dashboard</title>" in body
    csp = headers["Content-Security-Policy"]
    nonce = csp.split("'nonce-", 1)[1].split("'", 1)[0]
    assert "default-src 'self'" in csp and f'nonce="{nonce}"'.encode() in body
    assert b"{{NONCE}}" not in body and b"http://" not in body.replace(b"http://www.w3.org", b"")
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"


def test_a_remote_address_is_refused_unless_allowed(sol_home: Home) -> None:
    for address in ("0.0.0.0:0", ":::0", "[::]:8080", "192.0.2.1:80"):
        with pytest.raises(SolError, match="not a loopback address"):
            parse_address(address)
    with pytest.raises(SolError, match="not a loopback address"):
        start(sol_home, "0.0.0.0:0")
    with pytest.raises(SolError, match="HOST:PORT"):
        parse_address("localhost:http")
    assert parse_address("localhost:8080") == ("localhost", 8080)
    assert parse_address("[::1]:0") == ("::1", 0)
    assert parse_address("9000") == ("127.0.0.1", 9000)
    assert parse_address("0.0.0.0:0", allow_remote=True) == ("0.0.0.0", 0)


def test_the_board_arrives_as_json_and_streams_changes(served: WebServer, seeded: Home) -> None:
    code, headers, body = get(at(served, "/api/board"))
    assert code == 200 and headers["Content-Type"] == "application/json"
    data = json.loads(body)
    writs = {w["name"]: w for world in data["board"]["worlds"] for w in world["writs"]}
    assert writs["api"]["phase"] == "Working" and writs["api"]["agent"] == "ember"
    assert writs["docs"]["depends"] == ["shop/api"]
    assert writs["ui"]["title"] == "Page <script>window.pwned=1</script>"  # data, as is
    assert "\x1b" not in body.decode() and "\\\\x1b]0;pwned\\\\x07" in body.decode()
    assert sum(data["metrics"]["landed"]) == 5 and sum(data["metrics"]["sentBack"]) == 1
    assert sum(data["metrics"]["gateSeconds"]) == pytest.approx(160.0)
    response: HTTPResponse = urllib.request.urlopen(at(served, "/api/stream"), timeout=10)
    with response:
        assert response.headers["Content-Type"] == "text/event-stream"
        assert _phases(next_event(response))["api"] == "Working"
        set_phase(seeded, "api", "Resolved")
        changed = time.monotonic()
        assert _phases(next_event(response))["api"] == "Resolved"
        assert time.monotonic() - changed < LIVE


def next_event(response: HTTPResponse) -> dict[str, Any]:
    lines: list[bytes] = []
    while (line := response.readline()) not in (b"\n", b""):
        lines.append(line)
    data = b"".join(x[6:] for x in lines if x.startswith(b"data: "))
    return json.loads(data) if data else next_event(response)


def _phases(data: dict[str, Any]) -> dict[str, str]:
    return {w["name"]: w["phase"] for world in data["board"]["worlds"] for w in world["writs"]}


# ---- the page in a real browser ------------------------------------------------------


def open_browser(size: str = "1400,1000") -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={size}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless chromium for the module (it takes ~2 s to start)."""
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run does)")
    driver = open_browser()
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def screenshot_on_failure(driver: Any, where: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        path = where / "dashboard-failure.png"
        with contextlib.suppress(Exception):
            driver.save_screenshot(str(path))
            print(f"screenshot of the page: {path}")
        raise


def test_the_page_shows_the_board_live_with_its_plot_and_graph(
        browser: Any, served: WebServer, seeded: Home, tmp_path: Path) -> None:
    def js(script: str) -> Any:
        return browser.execute_script(script)

    def phase(name: str) -> str:
        return js(f"const c = document.querySelector('tr[data-writ=\"shop/{name}\"] td.phase');"
                  "return c ? c.textContent : ''")

    browser.get(served.url)
    with screenshot_on_failure(browser, tmp_path):
        poll(lambda: phase("api") == "Working", timeout=10, what="the writ api on the page")
        assert js("return document.getElementById('conn').textContent") == "live"
        set_phase(seeded, "api", "Merging")
        poll(lambda: phase("api") == "Merging", timeout=LIVE, what="the new phase within 2 s")
        # inert: markup in a title and a message is text, and nothing of it ran
        ui = js("return document.querySelector('tr[data-writ=\"shop/ui\"] td.text').textContent")
        assert "Page <script>window.pwned=1</script>" in ui and "\\x1b]0;pwned\\x07" in ui
        assert js("return [window.pwned, document.scripts.length, "
                  "document.querySelectorAll('img').length]") == [None, 1, 0]
        # the plot: a bar for each series in the hour of the events
        bars = js("return [...document.querySelectorAll('#plot rect.bar')].map(r => "
                  "[r.getAttribute('class'), parseFloat(r.getAttribute('height'))])")
        assert {c for c, h in bars if h > 0} == {"bar landed", "bar gate", "bar back"}
        # the graph: one node per writ (6: the caravan's 4 and the 2 outside it), the
        # dependsOn arrows and the caravan's phase order
        nodes = js("return [...document.querySelectorAll('#dag g.node')].map(g => "
                   "[g.getAttribute('data-writ'), g.querySelector('rect').getAttribute('class')])")
        assert sorted(n for n, _ in nodes) == [f"shop/{n}" for n in sorted(
            ["schema", "api", "ui", "docs", "loose", "after-loose"])]
        assert dict(nodes)["shop/api"] == "node Merging"
        edges = js("return [...document.querySelectorAll('#dag path.edge')].map(p => "
                   "[p.getAttribute('data-from'), p.getAttribute('data-to'), "
                   "p.getAttribute('class')])")
        assert ["shop/schema", "shop/api", "edge depends"] in edges
        assert ["shop/api", "shop/docs", "edge depends"] in edges
        assert ["shop/loose", "shop/after-loose", "edge depends"] in edges
        assert ["shop/schema", "shop/ui", "edge order"] in edges
        assert ["shop/ui", "shop/docs", "edge order"] in edges
        assert js("return document.querySelectorAll('#caravans progress').length") == 3


# ---- sol up --web --------------------------------------------------------------------


def test_sol_up_web_serves_the_page_restarts_it_and_stops_it(
        sol_home: Home, tmp_path: Path) -> None:
    from test_prefect import daemon_commands

    with daemon_commands(sol_home, tmp_path) as daemon:
        assert "not a loopback" in daemon("up", "--web", "0.0.0.0:0").stderr
        result = daemon("up", "--web", "127.0.0.1:0")
        assert result.returncode == 0, result.stderr
        url = result.stdout.split("Dashboard: ", 1)[1].split()[0]
        url_file = sol_home.run / "web.url"
        assert url_file.read_text().strip() == url and url_file.stat().st_mode & 0o777 == 0o600
        code, _, body = get(url)
        assert code == 200 and b"sol dashboard" in body
        pid = read_pid(sol_home.run / "web.pid")
        assert pid, "the web child writes its pid"
        token = url.split("token=", 1)[1]
        for process in (pid, read_pid(sol_home.run / "prefect.pid")):
            argv = Path(f"/proc/{process}/cmdline").read_bytes()
            assert token.encode() not in argv, "the token is on a command line"
        status = daemon("status").stdout
        assert f"web page at {url.split('?')[0]}" in status and token not in status
        again = daemon("up", "--web", "127.0.0.1:0")
        assert again.returncode == 0 and f"Dashboard: {url}" in again.stdout
        os.kill(pid, signal.SIGKILL)
        poll(lambda: read_pid(sol_home.run / "web.pid") not in (None, pid), timeout=15,
             what="the web child restarted")
        poll(lambda: _answers(url), timeout=10, what="the same URL answering again")
        assert daemon("down").returncode == 0
        assert not url_file.exists() and not _answers(url)


def _answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


# ---- the README's screenshot ---------------------------------------------------------


def make_screenshot(target: Path) -> None:
    """The page on a seeded sphere with a gate running and a day of landings, as a PNG
    (the README's)."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        home = Home(base / "solhome")
        os.environ["SOL_HOME"] = str(home.root)
        home.init()
        store = Store(home.db)
        try:  # a day of landings before the seed's own events
            for hour in range(1, 20):
                for n in range((hour * 7) % 4):
                    made = store.event("merged", kind="Writ", world="shop", name=f"w{hour}-{n}",
                                     message="landed")
                    store.db.execute("UPDATE events SET ts = ts - ? WHERE id = ?",
                                     (hour * 3600, made))
                    made = store.event("gate-passed", kind="Writ", world="shop",
                                     name=f"w{hour}-{n}", message="gate test passed",
                                     seconds=20.0 + (hour * 13) % 50)
                    store.db.execute("UPDATE events SET ts = ts - ? WHERE id = ?",
                                     (hour * 3600, made))
        finally:
            store.close()
        seed(home, base)
        store = Store(home.db)
        try:
            store.set_status(("Writ", "shop", "ui"), phase="Merging", agent="quartz",
                             attempt=1, message="gate test running")
            store.set_status(("Writ", "shop", "loose"), phase="Resolved", agent="flint",
                             attempt=1, message="queued for the forge")
            for writ, agent in (("ui", "quartz"), ("loose", "flint")):
                store.add_mr("shop", writ, branch=f"sol/{writ}", base="main", agent=agent,
                             attempt=1, priority=2)
            (home.run / "forge-shop.gate").write_text("{}")
            os.utime(home.run / "forge-shop.gate", (time.time() - 95, time.time() - 95))
            for i, writ in enumerate(("schema", "api", "ui", "docs", "loose", "after-loose")):
                store.db.execute("UPDATE objects SET created_at = created_at - ? WHERE "
                                 "kind = 'Writ' AND name = ?", (3000 - i * 400, writ))
        finally:
            store.close()
        server = start(home, "127.0.0.1:0")
        driver = open_browser("1400,1560")
        try:
            driver.get(server.url)
            poll(lambda: driver.execute_script(
                "return document.querySelectorAll('#dag g.node').length") == 6, timeout=10)
            time.sleep(1.5)  # the elapsed times tick once
            driver.save_screenshot(str(target))
        finally:
            driver.quit()
            server.close()


if __name__ == "__main__":
    make_screenshot(Path(sys.argv[1] if len(sys.argv) > 1 else "dashboard-web.png"))
