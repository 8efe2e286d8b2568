"""Shell completion: `sol completion bash|zsh|fish` prints click's own script, and the
functions here complete kinds and the names of objects in the store.

The script runs `sol` with `_SOL_COMPLETE` set on every TAB, so each function reads the
store only when it exists, never creates or migrates anything, and never raises: with
no sphere (or a broken one) a completion offers nothing rather than an error on the
user's prompt line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click
from click.shell_completion import CompletionItem, get_completion_class

from reconciler.core.errors import SolError
from reconciler.core.home import Home
from reconciler.core.store import Store

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_SOL_COMPLETE"
"""The variable the scripts set: `_SOL_COMPLETE=bash_complete sol ...` answers a TAB."""
KIND_WORDS = ("worlds", "writs", "caravans", "envoys", "agents", "mrs",
              "world", "writ", "caravan", "envoy", "agent", "mr")
KINDS = {"world": "World", "writ": "Writ", "caravan": "Caravan", "envoy": "Envoy",
         "agent": "Agent", "mr": "MergeRequest"}

T = TypeVar("T")


def _quiet(read: Callable[[Store], list[T]]) -> list[T]:
    """`read` on the sphere's store; nothing when there is none or anything goes wrong."""
    try:
        home = Home.from_env()
        if not home.db.is_file():
            return []
        store = Store(home.db)
        try:
            return read(store)
        finally:
            store.close()
    except Exception:  # noqa: BLE001 - a TAB must never print a traceback on a prompt
        return []


def _objects(kind: str, world: str | None) -> list[tuple[str, str]]:
    """(world, name) of every object of `kind` (canonical) in the store."""
    def read(store: Store) -> list[tuple[str, str]]:
        if kind == "Agent":
            return [(a.world, a.name) for a in store.agents(world)]
        if kind == "MergeRequest":
            return [(m.world, str(m.id)) for m in store.mrs(world)]
        return [(r.world, r.name)
                for r in store.list(kind, world if kind != "World" else None)]

    return _quiet(read)


def _offer(found: list[tuple[str, str]], incomplete: str) -> list[CompletionItem]:
    """Short names, or WORLD/NAME once the user typed a `/`; each once, in order."""
    words = [f"{w}/{n}" if "/" in incomplete and w else n for w, n in found]
    return [CompletionItem(word) for word in dict.fromkeys(words) if word.startswith(incomplete)]


def kinds(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The KIND argument of get and describe."""
    return [CompletionItem(word) for word in KIND_WORDS if word.startswith(incomplete.lower())]


def object_names(ctx: click.Context, param: click.Parameter,
                 incomplete: str) -> list[CompletionItem]:
    """The NAME argument: objects of the kind given before it (and of --world, if given)."""
    word = str(ctx.params.get("kind") or "").lower()
    kind = KINDS.get(word.removesuffix("s") if word != "mrs" else "mr")
    if kind is None:
        return []
    return _offer(_objects(kind, ctx.params.get("world") or None), incomplete)


def agent_names(ctx: click.Context, param: click.Parameter,
                incomplete: str) -> list[CompletionItem]:
    """Agents (attach, logs)."""
    return _offer(_objects("Agent", ctx.params.get("world") or None), incomplete)


def world_names(ctx: click.Context, param: click.Parameter,
                incomplete: str) -> list[CompletionItem]:
    return _offer(_objects("World", None), incomplete)


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
@click.pass_context
def completion(ctx: click.Context, shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    \b
    bash:  eval "$(sol completion bash)"   in ~/.bashrc  (bash 4.4 or newer)
    zsh:   eval "$(sol completion zsh)"    in ~/.zshrc
    fish:  sol completion fish > ~/.config/fish/completions/sol.fish

    \b
    sol completion bash > ~/.local/share/bash-completion/completions/sol
    eval "$(sol completion zsh)"
    """
    cls = get_completion_class(shell)
    if cls is None:  # pragma: no cover - click ships all three
        raise SolError(f"click has no completion for {shell}; use bash, zsh or fish")
    root = ctx.find_root().command
    script = cls(root, {}, "sol", COMPLETE_VAR).source()
    click.echo(script)


COMMANDS = [completion]
