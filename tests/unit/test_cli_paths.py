"""The CLI shows paths as the user would type them: the state folder relative to the
current directory when it lies inside it (so a README session reads the same on every
machine), absolute otherwise."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from buildflow.cli import cli
from buildflow.cli._common import display_path

TOY_APP = Path(__file__).resolve().parents[1] / "ui" / "toy_app.py"


def test_display_path(tmp_path: Path) -> None:
    assert display_path(tmp_path / ".buildflow" / "local", cwd=tmp_path) == ".buildflow/local"
    assert display_path(tmp_path, cwd=tmp_path) == "."
    assert display_path(tmp_path / "a" / ".." / "b", cwd=tmp_path) == "b"
    outside = tmp_path.parent / "elsewhere"
    assert display_path(outside, cwd=tmp_path) == str(outside.resolve())


def test_plan_names_the_state_folder_relative_to_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    shutil.copy(TOY_APP, app_dir / "toy_app.py")
    monkeypatch.chdir(app_dir)
    monkeypatch.delenv("BUILDFLOW_STATE_DIR", raising=False)
    monkeypatch.delenv("BUILDFLOW_ENV", raising=False)
    runner = CliRunner()

    inside = runner.invoke(cli, ["plan", "toy_app:app"], input="n\n", env={"COLUMNS": "200"})
    assert "in 'local' (.buildflow/local)" in inside.output, inside.output
    assert str(tmp_path) not in inside.output

    elsewhere = tmp_path / "state"
    outside = runner.invoke(
        cli, ["plan", "toy_app:app", "--state-dir", str(elsewhere)], input="n\n", env={"COLUMNS": "200"}
    )
    # the table's title wraps (and folds a long path) at the table's width
    squeezed = "".join(outside.output.split())
    assert f"in'local'({elsewhere.resolve()})" in squeezed, outside.output
