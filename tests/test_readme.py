"""The README's quick start is true: its commands exist, its paths are the real ones, and
CI runs its test command. (The query command itself is run by the end-to-end test.)"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
QUICK_START = README.split("## Quick start", 1)[1].split("```bash", 1)[1].split("```", 1)[0]


def commands() -> list[str]:
    return [line.split("#")[0].strip() for line in QUICK_START.strip().splitlines()]


def test_quick_start_has_the_session_in_order() -> None:
    cmds = commands()
    expected = [
        "./setup.sh",
        "buildflow plan main:app",
        "buildflow run main:app",
        "cp ",
        "buildflow query main:app",
        "buildflow destroy main:app",
        "./test.sh",
    ]
    positions = [next(i for i, c in enumerate(cmds) if c.startswith(e)) for e in expected]
    assert positions == sorted(positions)


def test_ci_runs_the_readme_test_command() -> None:
    assert "./test.sh" in commands()
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\./test\.sh\s*$", ci, re.M)


def test_upload_folder_is_where_the_local_bucket_lives() -> None:
    from buildflow.cli import load_app

    cp = next(c for c in commands() if c.startswith("cp "))
    folder = cp.split()[-1].rstrip("/")
    app = load_app(str(REPO / "main.py") + ":app")
    env = app.environment("local", state_dir=None)
    (bound,) = app.bind(env)
    assert bound.source.bucket_dir == (REPO / folder).resolve()  # type: ignore[attr-defined]
