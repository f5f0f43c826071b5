"""The files of the working tree that git would commit (tracked, plus untracked ones it does
not ignore): what the packaging and repository-text tests look at."""

from __future__ import annotations

import subprocess
from pathlib import Path

__all__ = ["REPO", "repository_files"]

REPO = Path(__file__).resolve().parent.parent


def repository_files() -> list[str]:
    """Paths relative to the repository root, regular files and symbolic links to them."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout.decode()
    return [p for p in out.split("\0") if p and (REPO / p).is_file()]
