"""`sol cost`: tokens by kind and USD, per writ, agent, model or day, from transcripts."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from helpers import failure
from ledger_fixtures import EXPECTED, VEGA, install, tokens, usd

from reconciler.core.home import Home

Sol = Callable[..., subprocess.CompletedProcess[str]]


def cost(sol: Sol, *args: str) -> dict:
    done = sol("cost", *args, "-o", "json")
    assert done.returncode == 0, failure(done)
    return json.loads(done.stdout)


def test_json_gives_the_exact_sums_per_writ_and_per_model(sol_home: Home, sol: Sol) -> None:
    install(sol_home)
    writs = cost(sol)
    got = {f"{i['world']}/{i['writ']}": tokens(i) for i in writs["items"]}
    assert got == EXPECTED["writs"]
    models = cost(sol, "--by", "model")
    assert {i["model"]: tokens(i) for i in models["items"]} == EXPECTED["models"]
    for item in models["items"]:
        assert item["usd"] == usd({item["model"]: tokens(item)})
        assert item["unpriced"] is (item["model"] == "claude-mystery-9")
    alone = {"add-rate-limit": "claude-sonnet-4-5-20250929", "docs-update": "gpt-5-codex",
             "": "claude-sonnet-4-5-20250929"}  # writs of one model each
    for item in writs["items"]:
        if item["writ"] in alone:
            key = f"shop/{item['writ']}"
            assert item["usd"] == usd({alone[item["writ"]]: EXPECTED["writs"][key]})
    login = next(i for i in writs["items"] if i["writ"] == "fix-login")
    assert login["usd"] == usd({m: EXPECTED["models"][m] for m in (
        "claude-opus-4-1-20250805", "claude-haiku-4-5-20251001")})
    assert login["unpriced"] is True and login["unpricedModels"] == ["claude-mystery-9"]
    assert writs["total"]["usd"] == usd(EXPECTED["models"])
    assert writs["total"]["tokens"]["total"] == sum(
        sum(t.values()) for t in EXPECTED["models"].values())


def test_a_second_run_and_appended_lines_never_count_twice(sol_home: Home, sol: Sol) -> None:
    install(sol_home)
    first = cost(sol)
    assert cost(sol) == first
    path = sol_home.root / "worlds" / VEGA
    last = path.read_text().splitlines()[-1]
    with path.open("a") as handle:  # the same message again, then a new one
        handle.write(last + "\n" + last.replace("msg_v3", "msg_v9") + "\n")
    after = {f"{i['world']}/{i['writ']}": tokens(i) for i in cost(sol)["items"]}
    assert after["shop/add-rate-limit"]["input"] == EXPECTED["writs"]["shop/add-rate-limit"][
        "input"] + 5


def test_the_table_shows_tokens_by_kind_and_usd(sol_home: Home, sol: Sol) -> None:
    install(sol_home)
    done = sol("cost", "--by", "agent")
    assert done.returncode == 0, failure(done)
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["WORLD", "AGENT", "INPUT", "OUTPUT", "CACHE", "WRITE",
                                "CACHE", "READ", "TOTAL", "USD"]
    vega = next(x.split() for x in lines if " vega " in f" {x} ")
    assert vega[:4] == ["shop", "vega", "133", "445"] and vega[-1] == "0.02"
    orion = next(x.split() for x in lines if " orion " in f" {x} ")
    assert orion[-1].endswith("*")  # claude-mystery-9 has no price
    assert any(x.split()[:2] == ["shop", "(envoy)"] for x in lines)
    assert lines[-2].split()[0] == "TOTAL"
    assert "no price for claude-mystery-9" in lines[-1]


def test_filters_by_world_and_since_and_by_day(sol_home: Home, sol: Sol) -> None:
    install(sol_home)
    assert cost(sol, "--world", "other")["items"] == []
    assert len(cost(sol, "--world", "shop")["items"]) == 4
    # the fixture's Claude lines are 10:00-10:41 UTC, its Codex ones 11:00-11:05 UTC
    late = cost(sol, "--since", "2025-11-20T10:30:00+00:00")
    assert {i["writ"] for i in late["items"]} == {"", "docs-update"}
    assert cost(sol, "--since", "24h")["items"] == []
    days = cost(sol, "--by", "day")
    assert [len(i["day"]) for i in days["items"]] == [10] * len(days["items"])
    assert sum(i["tokens"]["total"] for i in days["items"]) == days["total"]["tokens"]["total"]


def test_nothing_recorded_and_bad_input_are_one_sentence(sol_home: Home, sol: Sol,
                                                         tmp_path: Path) -> None:
    done = sol("cost")
    assert done.returncode == 0 and done.stdout.strip() == "No usage recorded."
    bad = sol("cost", "--since", "yesterday")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert "--since 'yesterday' is neither a duration" in bad.stderr
    sol_home.config.write_text("prices:\n  my-model: {input: -1}\n")
    broken = sol("cost")
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    assert "sol.yaml" in broken.stderr


def test_prices_in_sol_yaml_reprice_every_figure(sol_home: Home, sol: Sol) -> None:
    install(sol_home)
    sol_home.config.write_text("prices:\n  claude-mystery-9: {input: 1000, output: 1000}\n")
    models = {i["model"]: i for i in cost(sol, "--by", "model")["items"]}
    assert models["claude-mystery-9"]["usd"] == 0.07
    assert models["claude-mystery-9"]["unpriced"] is False


def test_get_writs_and_describe_show_each_writs_tokens_and_cost(
        sol_home: Home, sol: Sol, tmp_path: Path, repo: Path) -> None:
    from helpers import world_yaml, writ_yaml, write_specs

    names = sorted({key.split("/")[1] for key in EXPECTED["writs"] if key.split("/")[1]})
    specs = write_specs(tmp_path / "specs", world_yaml("shop", repo, extra="suspend: true\n"),
                        *(writ_yaml(n, "shop") for n in names))
    sol("apply", "-f", str(specs), check=True)
    install(sol_home)
    totals = {i["writ"]: i for i in cost(sol)["items"]}  # brings the ledger up to date
    listed = json.loads(sol("get", "writs", "-o", "json", check=True).stdout)
    for obj in listed:
        name = obj["metadata"]["name"]
        expected = totals[name]
        assert obj["status"]["cost"] == {"tokens": expected["tokens"]["total"],
                                         "usd": expected["usd"],
                                         "unpriced": expected["unpriced"]}
    wide = sol("get", "writs", "-o", "wide", check=True).stdout.splitlines()
    assert "TOKENS" in wide[0] and "COST" in wide[0]
    login = next(line for line in wide if " fix-login " in line)
    assert f"{totals['fix-login']['tokens']['total']:,}" in login and "*" in login
    shown = sol("describe", "writ", "fix-login", check=True).stdout
    assert f"Cost:        {totals['fix-login']['tokens']['total']:,} tokens, $" in shown
