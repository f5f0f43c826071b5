"""Which environment an app was planned in, remembered beside its state.

``plan`` records ``{app: {"latest": env, "envs": {env: {"state_dir", "planned_at"}}}}`` in
``planned.json``: in ``.buildflow/`` beside the app when the state folder is the default
``.buildflow/<env>``, otherwise in the ``--state-dir`` folder. ``destroy`` removes the
environment again. ``run`` and ``query`` compare it with the environment they resolved, so a
second terminal without ``BUILDFLOW_ENV`` (or the stack's variables) does not silently run,
or wait, in another environment than the one the app was just planned in.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from buildflow.environment import Environment
from buildflow.errors import EnvironmentMismatchError

__all__ = ["app_key", "record_plan", "record_destroy", "check_planned"]

_FILE = "planned.json"


def app_key(spec: str) -> str:
    """``module:attribute`` of an app argument (``main``, ``./main.py:app`` -> ``main:app``)."""
    module, _, attr = spec.partition(":")
    if module.endswith(".py") or os.sep in module:
        module = Path(module).stem
    return f"{module}:{attr or 'app'}"


def _record_path(environment: Environment, app_dir: Path) -> Path:
    default = (app_dir / ".buildflow" / environment.name).resolve()
    if environment.state_dir == default:
        return default.parent / _FILE
    return environment.state_dir / _FILE


def _load(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _save(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)


def record_plan(spec: str, environment: Environment, app_dir: Path) -> None:
    """Remember that ``spec`` was planned (and applied) in ``environment``."""
    path = _record_path(environment, app_dir)
    data = _load(path)
    entry = data.setdefault(app_key(spec), {"envs": {}})
    entry["latest"] = environment.name
    entry.setdefault("envs", {})[environment.name] = {
        "state_dir": str(environment.state_dir),
        "planned_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    _save(path, data)


def record_destroy(spec: str, environment: Environment, app_dir: Path) -> None:
    """Forget ``environment`` for ``spec`` (its resources were deleted)."""
    path = _record_path(environment, app_dir)
    data = _load(path)
    entry = data.get(app_key(spec))
    if not entry:
        return
    entry.get("envs", {}).pop(environment.name, None)
    if not entry.get("envs"):
        data.pop(app_key(spec))
    elif entry.get("latest") == environment.name:
        entry["latest"] = max(entry["envs"], key=lambda e: entry["envs"][e]["planned_at"])
    _save(path, data)


def _command(verb: str, spec: str, env: str) -> str:
    stack = env == "emulator" and not os.environ.get("PUBSUB_EMULATOR_HOST")
    prefix = 'eval "$(python -m infra.stack env)" && ' if stack else ""
    return f"{prefix}buildflow {verb} {spec} --env {env}"


def check_planned(
    spec: str, environment: Environment, app_dir: Path, *, explicit: bool, verb: str = "run"
) -> None:
    """Refuse an environment other than the one ``spec`` was planned in.

    ``explicit``: the environment came from ``--env`` or ``BUILDFLOW_ENV``. An implicit
    ``local`` is refused when the latest plan was elsewhere; an explicit environment when
    the app was planned only elsewhere. An app never planned through the CLI passes.

    Raises:
        EnvironmentMismatchError: with the command for the planned environment.
    """
    entry = _load(_record_path(environment, app_dir)).get(app_key(spec))
    if not entry or not entry.get("envs"):
        return
    envs: dict[str, Any] = entry["envs"]
    latest = str(entry.get("latest", next(iter(envs))))
    if environment.name == latest or (explicit and environment.name in envs):
        return
    when = envs.get(latest, {}).get("planned_at", "?")
    how = "as --env or BUILDFLOW_ENV asks" if explicit else "the default: no --env, BUILDFLOW_ENV unset"
    also = (
        f"; or, for the resources planned in {environment.name!r} earlier, "
        f"`buildflow {verb} {spec} --env {environment.name}`"
        if environment.name in envs
        else f"; or plan it here first: `buildflow plan {spec} --env {environment.name}`"
    )
    raise EnvironmentMismatchError(
        f"{spec} was planned in {latest!r} (at {when}), but this {verb} would use "
        f"{environment.name!r} ({how}). Run it where it was planned: "
        f"`{_command(verb, spec, latest)}` (or export BUILDFLOW_ENV={latest}){also}."
    )
