"""POSTing an event to a webhook: the only HTTP client in sol (the notifier's), imported
when a delivery is made, so no other command pays for urllib and http."""

from __future__ import annotations

import urllib.error
import urllib.request
from http.client import HTTPException
from typing import Any


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A webhook that redirects has moved: say so rather than POST somewhere else."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def post(url: str, body: bytes, *, timeout: float, name: str, event: str,
         delivery: int) -> str | None:
    """None when the webhook took it (2xx), else why not, in a phrase."""
    request = urllib.request.Request(
        url, data=body, method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "sol-notify",
                 "X-Sol-Event": event, "X-Sol-Delivery": str(delivery)})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status = response.status
            response.read(65536)
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code} {exc.reason}"
    except urllib.error.URLError as exc:
        return f"cannot reach {name}: {exc.reason}"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except (OSError, HTTPException) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if 200 <= status < 300 else f"HTTP {status}"
