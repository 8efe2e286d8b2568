"""A tiny calculator: the project the sol demo's agents work on."""

from calc.add import add

__all__ = ["add"]
