"""The tables of `sol get`: columns per kind (and `-o wide`), AGE, phase colours, and a
MESSAGE cut to the terminal's width.

Every cell goes through common.cell, so text from manifests and agents stays inert.
Styles are added only when the caller asks for colour (a terminal, NO_COLOR unset):
piped output is plain, one row a line.
"""

from __future__ import annotations

from typing import Any

from rich.cells import cell_len
from rich.table import Table

from reconciler.cli.common import cell, inert
from reconciler.core.times import age, parse_rfc3339

PHASE_STYLES = {
    "Merged": "green", "Done": "green", "Ready": "green", "Landed": "green",
    "Running": "green",
    "Failed": "red", "Error": "red",
    "Working": "cyan", "Merging": "cyan", "Resolved": "cyan", "Open": "cyan",
    "Pending": "yellow", "Queued": "yellow", "SentBack": "yellow",
    "Cancelled": "dim", "Orphaned": "dim", "Drydock": "dim", "Suspended": "dim",
    "Idle": "dim",
}
COLUMNS = {
    "World": ["NAME", "PHASE", "BRANCH", "SOURCE", "AGE", "MESSAGE"],
    "Writ": ["WORLD", "NAME", "PHASE", "AGENT", "ATTEMPT", "AGE", "MESSAGE"],
    "Caravan": ["WORLD", "NAME", "PHASE", "PHASES", "AGE", "MESSAGE"],
    "Envoy": ["WORLD", "NAME", "PHASE", "PERSONA", "BRANCH", "AGE", "MESSAGE"],
    "Agent": ["WORLD", "NAME", "PHASE", "WRIT", "SESSION", "AGE"],
    "MergeRequest": ["WORLD", "ID", "WRIT", "PHASE", "ATTEMPT", "BRANCH", "AGE", "MESSAGE"],
}
WIDE = {
    "World": ["RUNTIME", "CAPACITY", "GATES"],
    "Writ": ["PRIORITY", "BRANCH", "RESPAWNS", "DEPENDS", "SESSION", "TOKENS", "COST"],
    "Caravan": ["COMMISSIONED"],
    "Envoy": ["RUNTIME", "SESSION"],
    "Agent": ["RUNTIME", "STATE"],
    "MergeRequest": ["AGENT", "PRIORITY", "COMMIT"],
}
"""The columns `-o wide` adds, before MESSAGE (as kubectl's wide adds after the usual)."""


def headers(kind: str, wide: bool = False) -> list[str]:
    columns = COLUMNS[kind]
    if not wide:
        return columns
    if columns[-1] == "MESSAGE":
        return [*columns[:-1], *WIDE[kind], "MESSAGE"]
    return [*columns, *WIDE[kind]]


def writ_detail(obj: dict[str, Any]) -> str:
    """A writ's MESSAGE: its message, an orphan or an escalation said first."""
    status = obj["status"]
    text = status.get("message") or status.get("reason") or ""
    if status.get("orphaned") and "manifests" not in text:
        text = f"orphaned (not in the manifests); {text}"
    for cond in status.get("conditions", []):
        if cond.get("type") == "Escalated" and cond.get("status") == "True":
            said = cond.get("message", "")
            text = f"ESCALATED: {said}" + (f"; {text}" if text and said not in text else "")
    return text


def _created(obj: dict[str, Any]) -> float | None:
    stamp = obj["metadata"].get("creationTimestamp")
    try:
        return parse_rfc3339(stamp) if stamp else None
    except ValueError:
        return None


def _runtime(spec: dict[str, Any]) -> str:
    runtime = spec.get("runtime")
    if isinstance(runtime, dict):
        return str(runtime.get("name") or "-")
    return str(runtime or "-")


def _cost(cost: dict[str, Any] | None) -> dict[str, str]:
    """TOKENS and COST of a writ: `-` before any usage, `*` marks a model with no price."""
    if not cost:
        return {"TOKENS": "-", "COST": "-"}
    usd = "-" if cost.get("usd") is None else f"${cost['usd']:.2f}"
    return {"TOKENS": f"{cost['tokens']:,}", "COST": usd + ("*" if cost.get("unpriced") else "")}


def fields(kind: str, obj: dict[str, Any], now: float | None = None) -> dict[str, str]:
    """Every column of one object, wide ones included, as text."""
    md, spec, st = obj["metadata"], obj["spec"], obj["status"]
    common = {"WORLD": md.get("world", ""), "NAME": md["name"], "PHASE": st["phase"],
              "AGE": age(_created(obj), now), "MESSAGE": st.get("message") or ""}
    if kind == "World":
        gates = [g.get("name", "?") for g in (spec.get("forge") or {}).get("gates") or []]
        more = {"BRANCH": spec.get("branch", "main"), "SOURCE": spec.get("source", ""),
                "RUNTIME": _runtime(spec),
                "CAPACITY": str((spec.get("capacity") or {}).get("maxActive", 4)),
                "GATES": ",".join(gates) or "-"}
    elif kind == "Writ":
        more = {"AGENT": st.get("agent") or "-", "ATTEMPT": str(st.get("attempt", "-")),
                "MESSAGE": writ_detail(obj), "PRIORITY": str(spec.get("priority", 2)),
                "BRANCH": st.get("branch") or f"sol/{md['name']}",
                "RESPAWNS": str(st.get("respawns") or 0),
                "DEPENDS": ",".join(spec.get("dependsOn") or []) or "-",
                "SESSION": st.get("session") or "-", **_cost(st.get("cost"))}
    elif kind == "Caravan":
        more = {"PHASES": " | ".join(", ".join(p) for p in spec.get("phases", [])),
                "COMMISSIONED": str(spec.get("commissioned", True)).lower()}
    elif kind == "Envoy":
        more = {"PERSONA": spec.get("persona", "-"),
                "BRANCH": st.get("branch") or f"envoy/{md['name']}",
                "RUNTIME": _runtime(spec), "SESSION": st.get("session") or "-"}
    elif kind == "Agent":
        more = {"WRIT": st.get("writ") or "-", "SESSION": st.get("session") or "-",
                "RUNTIME": spec.get("runtime") or "-", "STATE": st.get("state") or "-"}
    else:
        more = {"ID": md["name"], "WRIT": spec["writ"], "ATTEMPT": str(spec["attempt"]),
                "BRANCH": spec["branch"], "AGENT": spec.get("agent") or "-",
                "PRIORITY": str(spec.get("priority", 2)),
                "COMMIT": (st.get("mergeCommit") or "-")[:12]}
    return {**common, **more}


def widths(kind: str, objs: list[dict[str, Any]], wide: bool = False) -> list[int]:
    """Each column's width as printed (inert text), MESSAGE's as 0: a watch prints its
    later rows to these widths, so they line up under the first listing."""
    columns = headers(kind, wide)
    rows = [fields(kind, o) for o in objs]
    return [0 if c == "MESSAGE" else max([cell_len(c), *(cell_len(inert(r[c])) for r in rows)])
            for c in columns]


def table(kind: str, objs: list[dict[str, Any]], *, wide: bool = False, colour: bool = False,
          width: int | None = None, header: bool = True, sizes: list[int] | None = None,
          now: float | None = None) -> Table:
    """The listing as a rich Table. `width`: the terminal's, to cut MESSAGE to (with an
    ellipsis) so a row stays one line; None when piped. `sizes`: minimum column widths
    (a watch's later rows). `colour`: style each PHASE."""
    columns = headers(kind, wide)
    sizes = [max(a, b) for a, b in zip(sizes or [0] * len(columns),
                                       widths(kind, objs, wide), strict=True)]
    t = Table(box=None, pad_edge=False, header_style="bold", show_header=header)
    for column, size in zip(columns, sizes, strict=True):
        if column == "MESSAGE":
            room = None
            if width is not None:
                room = max(12, width - sum(sizes) - 2 * (len(columns) - 1))
            t.add_column(column, no_wrap=True, overflow="ellipsis", max_width=room)
        else:
            t.add_column(column, no_wrap=True, min_width=size or None)
    for o in objs:
        row = fields(kind, o, now)
        t.add_row(*(cell(row[c], PHASE_STYLES.get(row[c], "") if colour and c == "PHASE"
                         else "") for c in columns))
    return t
