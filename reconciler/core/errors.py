"""The error family: raised deep, rendered once at the CLI edge, never as a traceback."""

from __future__ import annotations


class SolError(Exception):
    """A failure a user can act on; `message` is one sentence naming the object and the fix."""

    exit_code = 1

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code


class ManifestError(SolError):
    """Manifests failed validation; `problems` holds every `FILE:LINE:COL: message`."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Retry(SolError):
    """A temporary failure: the reconciler should look again after `after` seconds."""

    def __init__(self, message: str, after: float = 5.0) -> None:
        super().__init__(message)
        self.after = after
