"""Settings of the web UI."""

from __future__ import annotations

import dataclasses
import ipaddress

from buildflow.errors import ConfigurationError

__all__ = ["UiConfig", "is_loopback", "MIN_TOKEN_CHARS"]

MIN_TOKEN_CHARS = 16
"""Shortest access token accepted (a shorter one could be guessed)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip("[]").lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


@dataclasses.dataclass(frozen=True)
class UiConfig:
    """How the UI server listens and what it accepts.

    Attributes:
        host: Address to bind. Loopback (``127.0.0.1``, the default) needs no token;
            any other address requires ``token``.
        port: TCP port; 0 picks a free one (the URL printed says which).
        token: Access token. When set, every request must carry it: header
            ``Authorization: Bearer <token>`` or ``X-Buildflow-Token: <token>``, query
            parameter ``?token=<token>`` (opening the page with it sets an HttpOnly,
            SameSite=Strict cookie, so the page keeps it), or that cookie.
        max_upload_bytes: Largest file accepted (413 above it), bytes. Default 20 MiB.
        max_files_per_request: Most files in one upload request.
        gallery_size: Rows the live gallery shows (newest first).
        dead_letter_limit: Dead letters the page lists (newest first).
        poll_interval_s: How often the server checks the run's counters for new rows and
            metrics to push to the page, seconds.
        refresh_interval_s: The sink is queried at least this often while a page is
            open, even when the run's counters did not change, seconds.

    Raises:
        ConfigurationError: a non-loopback ``host`` without a token, a token shorter than
            :data:`MIN_TOKEN_CHARS` or with characters other than printable ASCII, or a
            limit that is not positive.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_upload_bytes: int = 20 * 1024 * 1024
    max_files_per_request: int = 32
    gallery_size: int = 24
    dead_letter_limit: int = 50
    poll_interval_s: float = 0.25
    refresh_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.token is not None:
            if len(self.token) < MIN_TOKEN_CHARS:
                raise ConfigurationError(
                    f"the UI token is {len(self.token)} characters long; use at least "
                    f"{MIN_TOKEN_CHARS}, e.g. one from "
                    "`python -c 'import secrets; print(secrets.token_urlsafe())'`"
                )
            if not all(33 <= ord(c) <= 126 and c not in '";\\,' for c in self.token):
                raise ConfigurationError(
                    "the UI token may only contain printable ASCII characters other than "
                    "space, quotes, ';', ',' and '\\' (it travels in a header, a URL and a cookie)"
                )
        elif not is_loopback(self.host):
            raise ConfigurationError(
                f"the UI would listen on {self.host!r}, which is not a loopback address, without "
                "an access token; pass --ui-token TOKEN (or set BUILDFLOW_UI_TOKEN), or bind "
                "to 127.0.0.1 (the default)"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigurationError(f"UI port {self.port!r} is not in 0..65535 (0: a free port)")
        for name in ("max_upload_bytes", "max_files_per_request", "gallery_size", "dead_letter_limit"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"UiConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.poll_interval_s <= 0 or self.refresh_interval_s <= 0:
            raise ConfigurationError("UiConfig.poll_interval_s and refresh_interval_s must be positive")

    @property
    def loopback(self) -> bool:
        """True when bound to a loopback address."""
        return is_loopback(self.host)
