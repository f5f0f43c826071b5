"""ruff (lint and format) and mypy --strict, as part of the suite CI runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = ["buildflow", "models", "processors", "schemas", "benchmarks", "infra", "tests", "main.py"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)


def test_ruff_lint() -> None:
    proc = _run("ruff", "check", *CODE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format() -> None:
    proc = _run("ruff", "format", "--check", *CODE)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict() -> None:
    proc = _run("mypy")
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Patterns of real credentials (not of the words "password" or "token", which docs use).
SECRET_PATTERNS = {
    "private key": r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    "service-account key file": r'"private_key_id"\s*:\s*"[0-9a-f]{20,}"',
    "AWS access key": r"\bAKIA[0-9A-Z]{16}\b",
    "Google API key": r"\bAIza[0-9A-Za-z_\-]{35}\b",
}
# one made-up sample per pattern, assembled at run time so this file does not match itself
SECRET_SAMPLES = {
    "private key": "-----BEGIN RSA " + "PRIVATE KEY-----",
    "service-account key file": '"private_key_id": "' + "0123456789abcdef" * 2 + '"',
    "AWS access key": "AKIA" + "ABCDEFGHIJKLMNOP",
    "Google API key": "AIza" + "x" * 35,
}


def test_no_credentials_in_tracked_files() -> None:
    """Key files and cloud keys never enter the repo (DSN passwords in docs and tests are
    made up; masking them in messages and logs is tested with the PostgreSQL sink)."""
    import re

    for what, sample in SECRET_SAMPLES.items():
        assert re.search(SECRET_PATTERNS[what], sample), what

    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    found = []
    for name in filter(None, files.decode().split("\0")):
        path = REPO / name
        if not path.is_file() or path.suffix in (".png", ".jpg", ".whl", ".pt"):
            continue
        text = path.read_text(errors="ignore")
        for what, pattern in SECRET_PATTERNS.items():
            for m in re.finditer(pattern, text):
                found.append(f"{name}: {what}: {m.group(0)[:40]}")
    assert not found, "credentials in the repository:\n" + "\n".join(found)
