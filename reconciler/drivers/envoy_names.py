"""How envoys are named in tmux and on disk, shared by the envoys and the sentinel.

`outposts.parse_session` splits `sol-<world>-<agent>` at the last hyphen and tmux refuses
`.` and `:`, so an envoy's agent name is `envoy_` plus its name with `-` turned into `_`
(names never hold `_`: reversible). The sentinel and the capacity count skip agents whose
name starts with `envoy`: envoys are never reaped and never count toward capacity.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.core.home import Home, session_name

PREFIX = "envoy"


def is_envoy(agent: str) -> bool:
    """Whether an agent (the part of a session name after the world) is an envoy."""
    return agent.startswith(PREFIX)


def agent_name(name: str) -> str:
    return f"{PREFIX}_" + name.replace("-", "_")


def session_of(world: str, name: str) -> str:
    return session_name(world, agent_name(name))


def envoy_dir(home: Home, world: str, name: str) -> Path:
    return home.world_dir(world) / "envoys" / name
