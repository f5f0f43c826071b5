"""The README's quick start is true: its commands exist, its paths are the real ones, and
CI runs its test command. (The query command itself is run by the end-to-end test.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_the_photo_step_comes_before_the_command_that_needs_it() -> None:
    """Issue 21 item 10: the samples hint came after the block that copies ~/photos."""
    section = README.split("## Quick start", 1)[1]
    assert section.index("python -m models.samples ~/photos") < section.index("cp ~/photos/")


def test_what_the_walkthroughs_write_into_the_checkout_is_ignored_by_git() -> None:
    """Issue 21 item 10: ``data/`` (``sample-folder data/textures``) was not in .gitignore;
    ``runs/`` (training output) and ``.buildflow/`` (state) must not be committed either."""
    import subprocess

    if subprocess.run(["git", "rev-parse"], cwd=REPO, capture_output=True, check=False).returncode:
        pytest.skip("not a git checkout")
    paths = [
        "data/textures/brick/00.jpg",
        "runs/fashion_mnist_cnn/model.pt",
        ".buildflow/local/warehouse.duckdb",
    ]
    ignored = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert sorted(ignored.stdout.split()) == sorted(paths), ignored.stdout + ignored.stderr


def test_every_stream_walkthrough_ends_with_destroy_and_stop() -> None:
    """Issue 21 item 10: the Fashion-MNIST section had no destroy/stop step."""
    from tests.walkthroughs import commands_of, key, walkthroughs

    for name in ("emulator", "kafka", "fashion-mnist-stream"):
        keys = [key(c) for c in commands_of(walkthroughs()[name])]
        assert keys[-2].startswith("buildflow destroy") and keys[-1] == "python -m infra.stack stop", (
            name,
            keys,
        )
