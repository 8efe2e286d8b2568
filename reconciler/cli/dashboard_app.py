"""The Textual app behind `sol dashboard`: the board (daemon/board.py, what `sol status`
prints) drawn live, with keys that run the same actions as `sol describe`, `attach`,
`logs`, `retry`, `suspend` and `resume`.

Cheap when idle (FIELD-NOTES "Textual in tmux"): the store's files are stat'ed every
POLL seconds and the board rebuilt only when they changed; a cell, the worlds pane or
the events pane is redrawn only when its text differs; the agent's pane is captured
only while a writ with an agent is selected, at most every PREVIEW seconds and only
when its session log grew. Every text shown is a rich Text (never markup) of inert
strings (dashboard_text.py makes them).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from typing import ClassVar

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Static

from reconciler.cli.common import Changes, readable
from reconciler.cli.dashboard_text import (
    COLUMNS,
    HELP,
    SORTS,
    events_text,
    matches,
    sort_key,
    worlds_text,
    writ_cells,
)
from reconciler.core.errors import SolError
from reconciler.core.home import session_name
from reconciler.daemon.board import Board, WritRow, snapshot
from reconciler.drivers.sphere import Sphere

POLL = 0.5
"""Seconds between two looks at the store's files (two stats, no query)."""
PREVIEW = 2.0
"""Seconds between two captures of the selected agent's pane, taken only when its
session log (which tmux's pipe-pane feeds) changed."""
CLOCK = 10.0
"""Seconds between two redraws for the clock alone (ages, a gate's elapsed time)."""
EVENTS = 30
COMPACT_WIDTH, COMPACT_HEIGHT = 110, 30
"""Below either, the side panes go under the table (an 80x24 terminal over SSH)."""


class TextScreen(ModalScreen[None]):
    """A scrollable page of inert text (describe, logs, help); escape or q closes it."""

    BINDINGS: ClassVar = [Binding("escape,q", "dismiss", "close")]
    DEFAULT_CSS = """
    TextScreen { align: center middle; }
    TextScreen > VerticalScroll { width: 95%; height: 90%; border: round $accent;
                                  background: $surface; }
    """

    def __init__(self, title: str, text: str, *, end: bool = False) -> None:
        super().__init__()
        self.title_text, self.body, self.end = title, text, end

    def compose(self) -> ComposeResult:
        scroll = VerticalScroll()
        scroll.border_title = self.title_text
        with scroll:
            yield Static(Text(self.body), id="body")

    def on_mount(self) -> None:
        if self.end:
            self.query_one(VerticalScroll).scroll_end(animate=False)


class Dashboard(App[None]):
    """`sol dashboard`: the board, live."""

    TITLE = "sol dashboard"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    #top { height: auto; max-height: 45%; }
    #body { height: 1fr; }
    #main { width: 3fr; }
    #side { width: 2fr; }
    #writs { height: 1fr; }
    #preview-box, #events-box { height: 1fr; border: round $secondary; }
    #filter { dock: bottom; display: none; }
    #filter.shown { display: block; }
    .compact #top { max-height: 6; }
    .compact #body { layout: vertical; }
    .compact #main { width: 1fr; height: 1fr; }
    .compact #side { width: 1fr; height: 8; layout: horizontal; }
    """
    BINDINGS: ClassVar = [
        Binding("a", "attach", "attach"), Binding("l", "logs", "logs"),
        Binding("r", "retry", "retry"), Binding("s", "suspend", "suspend/resume"),
        Binding("slash", "filter", "filter"), Binding("o", "sort", "sort"),
        Binding("question_mark", "help", "help"), Binding("q", "quit", "quit"),
        Binding("escape", "clear_filter", show=False),
    ]

    def __init__(self, sphere: Sphere, world: str | None = None) -> None:
        super().__init__()
        self.sphere, self.world = sphere, world
        self.sessions = sphere.sessions  # now: libtmux reads sys.stdout as it is imported,
        # which the running app replaces with an object without an encoding
        self.changes = Changes(sphere.store)
        self.board: Board | None = None
        self.sort, self.reverse, self.needle = "name", False, ""
        self.keys: list[str] = []
        self.cells: dict[str, tuple[Text, ...]] = {}
        self.shown: dict[str, Text] = {}
        self.preview_at, self.preview_of = 0.0, ""
        self.drawn_at = 0.0
        self.preview_log: tuple[int, int] | None = None

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="top"):
            yield Static(id="worlds")
        with Horizontal(id="body"):
            with Vertical(id="main"):
                yield DataTable(id="writs", cursor_type="row", zebra_stripes=False)
            with Vertical(id="side"):
                with VerticalScroll(id="preview-box"):
                    yield Static(Text("select a writ with an agent", style="dim"),
                                 id="preview")
                with VerticalScroll(id="events-box"):
                    yield Static(id="events")
        yield Input(placeholder="filter writs (enter keeps it, escape clears it)",
                    id="filter")
        yield Footer()

    @property
    def main(self) -> Screen[None]:
        """The board's screen, also while describe, a log or the help is on top of it
        (`self.query_one` looks in the screen on top)."""
        return self.screen_stack[0]

    def on_mount(self) -> None:
        table = self.main.query_one("#writs", DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.main.query_one("#preview-box").border_title = "agent"
        self.main.query_one("#events-box").border_title = "events"
        self._layout(self.size.width, self.size.height)
        self.refresh_board(force=True)
        self.set_interval(POLL, self.tick)
        table.focus()

    def on_resize(self, event: events.Resize) -> None:
        self._layout(event.size.width, event.size.height)

    def _layout(self, width: int, height: int) -> None:
        self.main.set_class(width < COMPACT_WIDTH or height < COMPACT_HEIGHT, "compact")

    # -- live updates -----------------------------------------------------------------

    def tick(self) -> None:
        self.refresh_board()
        self.refresh_preview()

    def refresh_board(self, force: bool = False) -> None:
        """Rebuild the board when the store's files changed (or `force`); the
        clock-driven texts (ages, a gate's elapsed time) are redrawn every CLOCK seconds
        between: each redraw of the table repaints all of it."""
        now = time.time()
        if self.changes() or force:
            self.board = snapshot(self.sphere, self.world, events=EVENTS)
            self._show("events", events_text(self.board), end=True)
        elif self.board is None or now - self.drawn_at < CLOCK:
            return
        self.redraw()

    def redraw(self) -> None:
        """The worlds pane and the table from the board as it is (a new filter or sort)."""
        if self.board is None:
            return
        self.drawn_at = now = time.time()
        self._show("worlds", worlds_text(self.board, now))
        self._fill(now)

    def _show(self, widget: str, text: Text, *, end: bool = False) -> None:
        """Redraw a pane only when its text changed; `end` keeps its newest lines (at the
        bottom) in view."""
        old = self.shown.get(widget)
        if old is None or old.plain != text.plain or old.spans != text.spans:
            self.shown[widget] = text
            self.main.query_one(f"#{widget}", Static).update(text)
            if end:
                box = self.main.query_one(f"#{widget}-box", VerticalScroll)
                self.call_after_refresh(box.scroll_end, animate=False)

    def visible(self) -> list[WritRow]:
        assert self.board is not None
        rows = [w for w in self.board.writs() if matches(w, self.needle)]
        return sorted(rows, key=sort_key(self.sort), reverse=self.reverse)

    def _fill(self, now: float) -> None:
        """The writs table: rebuilt when its rows or their order changed, otherwise only
        the cells whose text changed are updated."""
        assert self.board is not None
        table = self.main.query_one("#writs", DataTable)
        qualified = len(self.board.worlds) > 1
        rows = [(f"{w.world}/{w.name}", writ_cells(w, now, qualified)) for w in self.visible()]
        keys = [key for key, _ in rows]
        if keys != self.keys:
            selected = self.selected_key()
            table.clear()
            for key, cells in rows:
                table.add_row(*cells, key=key)
            if selected in keys:
                table.move_cursor(row=keys.index(selected), animate=False)
            self.keys, self.cells = keys, dict(rows)
            return
        for key, cells in rows:
            old = self.cells[key]
            for (column, _), was, now_cell in zip(COLUMNS, old, cells, strict=True):
                if was.plain != now_cell.plain or was.spans != now_cell.spans:
                    wider = now_cell.cell_len > table.columns[column].content_width
                    table.update_cell(key, column, now_cell, update_width=wider)
            self.cells[key] = cells

    def refresh_preview(self, force: bool = False) -> None:
        """The selected writ's agent pane, captured from tmux at most every PREVIEW
        seconds; terminal sequences dropped and control characters made inert."""
        writ = self.selected()
        box = self.main.query_one("#preview-box")
        if writ is None or not writ.agent:
            if self.preview_of:
                self.preview_of = ""
                box.border_title = "agent"
                self._show("preview", Text("no agent for this writ", style="dim"))
            return
        session = session_name(writ.world, writ.agent)
        now, log = time.monotonic(), self._log_stamp(writ)
        if not force and session == self.preview_of and (
                now - self.preview_at < PREVIEW or log == self.preview_log):
            return  # the pane draws into its log: an unchanged log, an unchanged pane
        self.preview_at, self.preview_of, self.preview_log = now, session, log
        box.border_title = f"agent {writ.agent}"
        lines = max(5, box.size.height)
        try:
            text = readable(self.sessions.recent_output(session, lines=lines))
        except SolError:
            text = ""
        self._show("preview", Text(text) if text else Text("(no session now)", style="dim"),
                   end=True)

    def _log_stamp(self, writ: WritRow) -> tuple[int, int] | None:
        try:
            st = self.sphere.home.agent_log(writ.world, writ.agent).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    # -- selection --------------------------------------------------------------------

    def selected_key(self) -> str | None:
        table = self.main.query_one("#writs", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def selected(self) -> WritRow | None:
        key = self.selected_key()
        if key is None or self.board is None:
            return None
        return next((w for w in self.board.writs() if f"{w.world}/{w.name}" == key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self.refresh_preview(force=True)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_describe()

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        column = str(event.column_key.value)
        if column in SORTS:
            self.reverse = not self.reverse if column == self.sort else False
            self.sort = column
            self.redraw()

    # -- actions ----------------------------------------------------------------------

    def _act(self, action: Callable[[WritRow], list[str] | None]) -> None:
        """Run an action on the selected writ; what it says, or its error, as a notice."""
        writ = self.selected()
        if writ is None:
            self.notify("no writ selected", severity="warning", markup=False)
            return
        try:
            said = action(writ)
        except SolError as exc:
            self.notify(exc.message, severity="error", markup=False, timeout=8)
            return
        if said:
            self.notify("\n".join(said), markup=False, timeout=6)
        self.refresh_board(force=True)

    def action_describe(self) -> None:
        from reconciler.cli.describe import render_describe
        from reconciler.cli.view import described

        def show(writ: WritRow) -> None:
            record = self.sphere.store.get("Writ", writ.world, writ.name)
            if record is None:
                raise SolError(f"writ {writ.world}/{writ.name} is gone from the store")
            text = render_describe(self.sphere, record, described(self.sphere, record))
            self.push_screen(TextScreen(f"writ {writ.world}/{writ.name}", text))

        self._act(show)

    def action_logs(self) -> None:
        from reconciler.cli.agent import log_tail

        def show(writ: WritRow) -> None:
            if not writ.agent:
                raise SolError(f"writ {writ.world}/{writ.name} has no agent yet")
            path = self.sphere.home.agent_log(writ.world, writ.agent)
            if not path.exists():
                raise SolError(f"agent {writ.world}/{writ.agent} has no log yet ({path})")
            self.push_screen(TextScreen(f"log of {writ.world}/{writ.agent} ({path})",
                                        log_tail(path), end=True))

        self._act(show)

    def action_attach(self) -> None:
        from reconciler.cli.agent import attach_command

        def attach(writ: WritRow) -> None:
            if not writ.agent:
                raise SolError(f"writ {writ.world}/{writ.name} has no agent yet")
            argv, env = attach_command(self.sphere, writ.world, writ.agent)
            try:
                with self.suspend():
                    subprocess.run(argv, env=env, check=False)
            except Exception as exc:  # SuspendNotSupported: no terminal to hand over
                raise SolError(f"cannot attach from here ({type(exc).__name__}): run "
                               f"`sol attach {writ.world}/{writ.agent}`") from exc

        self._act(attach)

    def action_retry(self) -> None:
        from reconciler.cli.operate import retry_writ

        def retry(writ: WritRow) -> list[str]:
            record = self.sphere.store.get("Writ", writ.world, writ.name)
            if record is None:
                raise SolError(f"writ {writ.world}/{writ.name} is gone from the store")
            return retry_writ(self.sphere, record)

        self._act(retry)

    def action_suspend(self) -> None:
        from reconciler.cli.operate import WRIT, resume_object, suspend_object

        def toggle(writ: WritRow) -> list[str]:
            act = resume_object if writ.suspended else suspend_object
            return act(self.sphere, WRIT, f"{writ.world}/{writ.name}")

        self._act(toggle)

    def action_filter(self) -> None:
        field = self.main.query_one("#filter", Input)
        field.add_class("shown")
        field.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        self.needle = event.value.strip()
        self.redraw()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        field = self.main.query_one("#filter", Input)
        if not field.value:
            field.remove_class("shown")
        self.main.query_one("#writs", DataTable).focus()

    def action_clear_filter(self) -> None:
        field = self.main.query_one("#filter", Input)
        field.value = ""
        field.remove_class("shown")
        self.needle = ""
        self.redraw()
        self.main.query_one("#writs", DataTable).focus()

    def action_sort(self) -> None:
        self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        self.reverse = False
        self.notify(f"sorted by {self.sort}", markup=False, timeout=2)
        self.redraw()

    def action_help(self) -> None:
        self.push_screen(TextScreen("help", HELP))
