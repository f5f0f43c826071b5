"""The README's walkthroughs, read from README.md at run time, run, and compared with what it claims.

A walkthrough is one or more fenced blocks of README.md, each preceded by an HTML comment
(invisible on GitHub)::

    <!-- walkthrough: quickstart
    first `python -m models.samples ~/photos`: the photo step the section names above the block
    run `./setup.sh && source .venv/bin/activate` as `true`: the tests run in the installed venv
    skip `./test.sh`: the suite itself
    expect `buildflow query`: 11 row(s)
    -->
    ```bash
    ...
    ```

and optionally a block of captured output, preceded by ``<!-- output: quickstart -->``: its
``$ command`` lines name a command of the walkthrough and the lines below it are what that
command must print (without ``$`` lines, the block is what the whole walkthrough prints).

Directives, one per line of the comment, each ending with ``: reason``:

* ``first `CMD` `` / ``then `CMD` ``: a command run before / after the block's own.
* ``run `OLD` as `NEW` ``: every command's text ``OLD`` is run as ``NEW`` (a shortening by
  a documented parameter, or a step the test session already did).
* ``skip `PREFIX` ``: commands starting with ``PREFIX`` are not run.
* ``expect `PREFIX`: LINE``: the first command starting with ``PREFIX`` prints ``LINE``.
* ``vary `REGEX` ``: text matching ``REGEX`` may differ (compared as ``~``).

How commands run: each line of a ``bash`` block (a heredoc or a ``\\`` continuation as one
command) is run by bash in a fresh copy of the app's folder (``main.py``; ``buildflow``,
``models``, ``processors``, ``schemas`` linked; ``infra`` copied), with ``HOME`` a scratch
folder (so ``~/photos`` is the test's), the venv's ``bin`` first on ``PATH``, the exports of
earlier commands (``eval``, ``export``) kept, ``y`` on stdin (the answer to a y/N prompt,
which click echoes as a terminal would) and ``COLUMNS=100``. A ``buildflow run`` without
``--until-idle`` or ``--max-events`` (or a ``buildflow serve``) runs until Ctrl-C, so it is
started in the background (the README's "another terminal") and gets SIGINT, as from Ctrl-C, before the next
``buildflow destroy`` or after the last command; while it runs, a command with expected output
is re-run (bounded) until that output appears. Every command must exit 0.

How outputs compare (:func:`missing_lines`): each expected line must appear, in order, in
what the command printed, with whitespace and line wrapping ignored, table column widths
ignored, and what varies between runs compared as ``~``: Rich's log timestamps, numbers with a
unit of time, size or rate (``6.94 s``, ``274 ms``, ``975 MB``, ``11.5 events/s``), table
cells under a header that ends with such a unit (``p50 ms``), and the block's ``vary`` items.
Counts, labels, confidences and accuracies are compared as printed.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import doctest
import os
import re
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console", "zsh"})
COLUMNS = "100"
#: How long a command with expected output is re-run while a background run works (s).
POLL_TIMEOUT_S = 180.0
#: How long a backgrounded run may take to drain after SIGINT (s).
DRAIN_TIMEOUT_S = 90.0

_COMMENT = re.compile(r"<!--(.*?)-->", re.S)
_DIRECTIVE = re.compile(r"^(first|then|run|skip|expect|vary)\s+`([^`]*)`(?:\s+as\s+`([^`]*)`)?\s*:\s*(.*)$")
_BOX = frozenset("┏┓┗┛┡┩┢┪┣┫┳┻╇╈╋━┃│─┼┬┴├┤┌┐└┘╭╮╰╯═║╔╗╚╝╠╣╦╩╬ ")
_UNIT = r"(?:events/s|img/s|images/s|rows/s|/s|ms|min|s|KB|MB|GB|KiB|MiB|GiB)"
_LOG_TIME = re.compile(r"\[\d\d/\d\d/\d\d \d\d:\d\d:\d\d\]")  # Rich's log time column
_VOLATILE = (
    re.compile(r"(?<![\w.])\d+(?:\.\d+)?\s?" + _UNIT + r"(?![\w/])"),
    re.compile(r"\b\d\d:\d\d:\d\d\b"),  # logging's %H:%M:%S
)
_UNIT_HEADER = re.compile(r"(?:^|\s)" + _UNIT + r"$")


# ------------------------------------------------------------------------------------------
# Reading README.md
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    language: str
    text: str
    line: int  #: 1-based line of the opening fence
    headings: tuple[str, ...]  #: the headings it sits under, outermost first
    marker: str | None  #: the HTML comment right above it (only blank lines between), stripped

    @property
    def where(self) -> str:
        return f"README.md:{self.line} ({' > '.join(self.headings)})"


@dataclasses.dataclass(frozen=True)
class Directive:
    kind: str
    argument: str
    replacement: str | None
    reason: str


@dataclasses.dataclass
class Walkthrough:
    name: str
    blocks: list[Block] = dataclasses.field(default_factory=list)
    outputs: list[Block] = dataclasses.field(default_factory=list)
    directives: list[Directive] = dataclasses.field(default_factory=list)

    def of(self, kind: str) -> list[Directive]:
        return [d for d in self.directives if d.kind == kind]


def blocks(text: str | None = None) -> list[Block]:
    """Every fenced block of the README (``text``, default README.md as it is now)."""
    lines = (README.read_text() if text is None else text).splitlines()
    found: list[Block] = []
    headings: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        if heading:
            level = len(heading.group(1))
            headings = [h for h in headings if h[0] < level] + [(level, heading.group(2).strip())]
        fence = re.match(r"^(```+|~~~+)\s*([\w+-]*)", line)
        if fence:
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))), len(lines)
            )
            found.append(
                Block(
                    language=fence.group(2).lower(),
                    text="\n".join(lines[i + 1 : end]),
                    line=i + 1,
                    headings=tuple(h[1] for h in headings),
                    marker=_marker_above(lines, i),
                )
            )
            i = end + 1
            continue
        i += 1
    return found


def _marker_above(lines: Sequence[str], fence: int) -> str | None:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0 or not lines[j].rstrip().endswith("-->"):
        return None
    start = j
    while start >= 0 and "<!--" not in lines[start]:
        start -= 1
    match = _COMMENT.search("\n".join(lines[start : j + 1]))
    return match.group(1).strip() if match else None


def walkthroughs(text: str | None = None) -> dict[str, Walkthrough]:
    """The README's walkthroughs by name, their blocks in README order."""
    found: dict[str, Walkthrough] = {}
    for block in blocks(text):
        if block.marker is None:
            continue
        head, _, rest = block.marker.partition("\n")
        kind, sep, name = head.partition(":")
        if not sep or kind.strip() not in ("walkthrough", "output"):
            continue
        walk = found.setdefault(name.strip(), Walkthrough(name.strip()))
        if kind.strip() == "output":
            walk.outputs.append(block)
            continue
        walk.blocks.append(block)
        for raw in rest.splitlines():
            if not raw.strip():
                continue
            match = _DIRECTIVE.match(raw.strip())
            if not match or not match.group(4).strip():
                raise ValueError(
                    f"{block.where}: walkthrough {name.strip()!r}: cannot read the directive "
                    f"{raw.strip()!r}; "
                    "write KIND `ARG`: reason (KIND: first, then, run `OLD` as `NEW`, skip, expect, vary)"
                )
            walk.directives.append(Directive(match.group(1), match.group(2), match.group(3), match.group(4)))
    return found


def shell_commands(script: str) -> list[str]:
    """The commands of a shell block: one per line, a heredoc or ``\\`` continuation kept whole;
    blank and comment-only lines dropped."""
    lines = script.splitlines()
    commands: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip() or line.lstrip().startswith("#"):
            i += 1
            continue
        command = [line]
        while command[-1].endswith("\\") and i + 1 < len(lines):
            i += 1
            command.append(lines[i])
        heredoc = re.search(r"<<-?\s*(['\"]?)(\w+)\1", strip_comment(line))
        if heredoc:
            tag = heredoc.group(2)
            while i + 1 < len(lines):
                i += 1
                command.append(lines[i])
                if lines[i].strip() == tag:
                    break
        commands.append("\n".join(command))
        i += 1
    return commands


def strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` outside quotes, after a space)."""
    quote: str | None = None
    escaped = False
    for k, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or line[k - 1].isspace()):
            return line[:k].rstrip()
    return line.rstrip()


def key(command: str) -> str:
    """A command as the README's captured sessions show it: first line, comment stripped."""
    return " ".join(strip_comment(command.splitlines()[0]).split())


# ------------------------------------------------------------------------------------------
# Comparing outputs
# ------------------------------------------------------------------------------------------


def _table_cells(line: str, bar: str) -> list[str]:
    return [c.strip() for c in line.strip().strip(bar).split(bar)]


def normalise_lines(text: str, vary: Sequence[str] = ()) -> list[str]:
    """``text``'s lines, each with what varies between runs replaced by ``~`` and whitespace
    and box-drawing runs collapsed; blank lines dropped (see the module docstring)."""
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    volatile_columns: set[int] = set()
    out = []
    for raw in text.splitlines():
        line = raw.rstrip()
        stripped = line.strip()
        if stripped and not set(stripped) <= _BOX:
            if stripped.startswith("┃"):
                cells = _table_cells(stripped, "┃")
                volatile_columns = {i for i, c in enumerate(cells) if _UNIT_HEADER.search(c)}
            elif stripped.startswith("│") and stripped.endswith("│"):
                cells = _table_cells(stripped, "│")
                cells = ["~" if i in volatile_columns else c for i, c in enumerate(cells)]
                line = "│ " + " │ ".join(cells) + " │"
        line = _replace_volatile(line, vary)
        line = re.sub(r"([━─═┄])\1+", r"\1", line)
        line = " ".join(line.split())
        if line:
            out.append(line)
    return out


def _replace_volatile(text: str, vary: Sequence[str]) -> str:
    text = _LOG_TIME.sub("", text)  # Rich leaves it out when it repeats: compared as absent
    for pattern in vary:
        text = re.sub(pattern, "~", text)
    for regex in _VOLATILE:
        text = regex.sub("~", text)
    return text


def missing_lines(expected: str, actual: str, vary: Sequence[str] = ()) -> list[str]:
    """The lines of ``expected`` not found, in order, in ``actual`` (both normalised; the
    actual output is compared as one line, so that wrapping does not matter)."""
    joined = _replace_volatile(" ".join(normalise_lines(actual, vary)), vary)
    position = 0
    missing = []
    for line in normalise_lines(expected, vary):
        # whole words: "11 row(s)" is not in "111 row(s)", nor "0.93" in "0.934"
        found = re.compile(r"(?<!\S)" + re.escape(line) + r"(?!\w|\.\d)").search(joined, position)
        if found is None:
            missing.append(line)
        else:
            position = found.end()
    return missing


# ------------------------------------------------------------------------------------------
# Running a walkthrough
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    command: str
    output: str
    returncode: int | None
    seconds: float


def runs_until_interrupted(command: str) -> bool:
    """A ``buildflow run`` (or ``serve``) that only Ctrl-C ends."""
    words = key(command).split()
    if words[:2] == ["buildflow", "serve"]:
        return True
    return words[:2] == ["buildflow", "run"] and not {"--until-idle", "--max-events"} & set(words)


def prepare_folder(root: Path, stack_state: Path | None = None) -> Path:
    """A fresh copy of the app's folder, named like the repository (``buildflow``), with its
    own ``HOME``; with ``stack_state``, the session stack's ``stack.json``/``stack.env`` copied
    to where ``python -m infra.stack env`` reads them."""
    app = root / "buildflow"
    app.mkdir()
    (root / "home").mkdir()
    shutil.copy2(REPO / "main.py", app / "main.py")
    for name in ("buildflow", "models", "processors", "schemas"):
        (app / name).symlink_to(REPO / name, target_is_directory=True)
    shutil.copytree(
        REPO / "infra", app / "infra", ignore=shutil.ignore_patterns("__pycache__", "*.tar*"), symlinks=True
    )
    if stack_state is not None:
        state = app / ".buildflow" / "stack" / "run"
        state.mkdir(parents=True)
        for name in ("stack.json", "stack.env"):
            shutil.copy2(stack_state / name, state / name)
    return app


class Session:
    """One shell session of a walkthrough: commands run one after another in ``folder``,
    exports carried from one to the next, background runs stopped with SIGINT."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.folder = folder
        self.env = env
        self.state = folder.parent / "shell-state.sh"
        self.state.write_text("")
        self.background: list[tuple[str, subprocess.Popen[bytes], Path, float]] = []
        self.results: list[Result] = []

    def _script(self, command: str) -> str:
        return (
            f"source {self.state} 2>/dev/null\n"
            f"{command}\n"
            "__walkthrough_rc=$?\n"
            f"export -p > {self.state}.new && mv {self.state}.new {self.state}\n"
            "exit $__walkthrough_rc\n"
        )

    def run(self, command: str, timeout_s: float = 280.0) -> Result:
        """Run ``command`` to its end. One that is still running after ``timeout_s`` fails the
        test with its output and every Python thread's stack of the ``buildflow`` processes
        it started (``buildflow run`` prints them on SIGUSR1), and its whole process group is
        killed (no command outlives its test)."""
        started = time.monotonic()
        proc = subprocess.Popen(
            ["bash", "-c", self._script(command)],
            cwd=self.folder,
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            stdout, _ = proc.communicate(b"y\n", timeout=timeout_s)
        except subprocess.TimeoutExpired:
            for pid in _group_members(proc.pid, "buildflow"):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGUSR1)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)  # collects the dumps (written at once) meanwhile
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
            raise AssertionError(
                f"{command!r} still running after {timeout_s:.0f} s; its output, then the stacks "
                f"of its buildflow processes:\n{stdout.decode(errors='replace')[-20000:]}"
            ) from None
        output = stdout.decode(errors="replace")
        result = Result(command, output, proc.returncode, time.monotonic() - started)
        self.results.append(result)
        return result

    def start(self, command: str) -> None:
        log = self.folder.parent / f"background-{len(self.background)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                ["bash", "-c", f"source {self.state} 2>/dev/null\nexec {command}"],
                cwd=self.folder,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.background.append((command, proc, log, time.monotonic()))
        # a placeholder, filled in by stop_background(): the background run's place in the session
        self.results.append(Result(command, "", None, 0.0))

    def background_output(self) -> str:
        return "".join(log.read_text(errors="replace") for _, _, log, _ in self.background)

    def stop_background(self) -> None:
        """SIGINT (Ctrl-C) to each background run's process group; wait for it to drain."""
        for command, proc, log, started in self.background:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=DRAIN_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
            result = next(r for r in self.results if r.command == command and r.returncode is None)
            result.output = log.read_text(errors="replace")
            result.returncode = proc.returncode
            result.seconds = time.monotonic() - started
        self.background = []

    def close(self) -> None:
        """Stop what is still running in the background, by SIGKILL to its process group."""
        for _, proc, _, _ in self.background:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def _group_members(pgid: int, name: str) -> list[int]:
    """PIDs of the processes of process group ``pgid`` but its leader (the shell) whose
    command line contains ``name`` (Linux ``/proc``; empty elsewhere)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        if entry.name == str(pgid):
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            # the fields after "(comm)": state, ppid, pgrp
            if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                continue
            if name in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"):
                found.append(int(entry.name))
    return found


def session_env(folder: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a reader's shell would have: the venv's ``bin`` first on ``PATH``, this
    checkout's code importable (``PYTHONPATH``), ``HOME`` a scratch folder, the model cache
    shared with the test session's (so the ONNX export is not redone), ``COLUMNS=100``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUILDFLOW_", "PYTEST_"))}
    for name in (
        "PUBSUB_EMULATOR_HOST",
        "STORAGE_EMULATOR_HOST",
        "BIGQUERY_EMULATOR_HOST",
        "KAFKA_BOOTSTRAP_SERVERS",
    ):
        env.pop(name, None)
    env["XDG_CACHE_HOME"] = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    if "BUILDFLOW_CACHE_DIR" in os.environ:
        env["BUILDFLOW_CACHE_DIR"] = os.environ["BUILDFLOW_CACHE_DIR"]
    env["HOME"] = str(folder.parent / "home")
    env["PATH"] = f"{REPO / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = COLUMNS
    env["TERM"] = "dumb"
    env.pop("VIRTUAL_ENV", None)
    env.update(extra or {})
    return env


def expectations(
    walk: Walkthrough, commands: Sequence[str], captured: bool = True
) -> tuple[dict[int, list[str]], list[str]]:
    """Expected output per command index, and the lines expected of the whole walkthrough
    (``captured=False``: only the ``expect`` directives')."""
    keys = [key(c) for c in commands]
    per_command: dict[int, list[str]] = {}
    whole: list[str] = []
    for block in walk.outputs if captured else ():
        current: int | None = None
        lines: list[str] = []
        for line in block.text.splitlines():
            if line.startswith("$ "):
                if current is not None:
                    per_command.setdefault(current, []).extend(lines)
                wanted = " ".join(line[2:].split())
                if wanted not in keys:
                    raise AssertionError(
                        f"{block.where}: the captured output shows `$ {wanted}`, which is not a command "
                        f"of walkthrough {walk.name!r}: {keys}"
                    )
                current, lines = keys.index(wanted), []
            elif current is None:
                whole.append(line)
            else:
                lines.append(line)
        if current is not None:
            per_command.setdefault(current, []).extend(lines)
    for d in walk.of("expect"):
        index = next((i for i, k in enumerate(keys) if k.startswith(d.argument)), None)
        if index is None:
            raise AssertionError(f"walkthrough {walk.name!r}: `expect {d.argument}` names no command of it")
        per_command.setdefault(index, []).append(EXPECT_SEPARATOR + d.reason)
    return per_command, whole


#: Marks an ``expect`` line: compared on its own, anywhere in the output (not in the order
#: of the captured lines).
EXPECT_SEPARATOR = "\x00"


def missing_in(expected: Sequence[str], actual: str, vary: Sequence[str] = ()) -> list[str]:
    """:func:`missing_lines` of the captured lines (in order) and of each ``expect`` line."""
    captured = [line for line in expected if not line.startswith(EXPECT_SEPARATOR)]
    alone = [line[1:] for line in expected if line.startswith(EXPECT_SEPARATOR)]
    missing = missing_lines("\n".join(captured), actual, vary) if captured else []
    return missing + [m for line in alone for m in missing_lines(line, actual, vary)]


def commands_of(walk: Walkthrough) -> list[str]:
    """The commands as run: ``first``, the blocks' own (``run ... as`` applied, ``skip``
    dropped), ``then``."""
    own: list[str] = []
    for block in walk.blocks:
        if block.language in SHELL_LANGUAGES:
            own.extend(shell_commands(block.text))
    skips = [d.argument for d in walk.of("skip")]
    for d in walk.of("skip") + walk.of("run"):
        if not any(d.argument in c for c in own):
            raise AssertionError(
                f"walkthrough {walk.name!r}: `{d.kind} {d.argument}` matches none of its commands "
                "(the README changed: update the directive)"
            )
    result = [d.argument for d in walk.of("first")]
    for command in own:
        if any(command.startswith(s) for s in skips):
            continue
        for d in walk.of("run"):
            command = command.replace(d.argument, d.replacement or "")
        result.append(command)
    return result + [d.argument for d in walk.of("then")]


def run_walkthrough(
    name: str,
    root: Path,
    *,
    stack_state: Path | None = None,
    env: dict[str, str] | None = None,
    compare: bool = True,
) -> list[Result]:
    """Run walkthrough ``name`` of README.md in a fresh folder under ``root`` and compare its
    outputs; raises AssertionError naming the command, the missing lines and the output.

    ``compare=False`` checks only the ``expect`` directives (a run in the background is still
    waited for through them), to refresh the README's captured output (:func:`transcript`)."""
    walk = walkthroughs()[name]
    folder = prepare_folder(root, stack_state)
    commands = commands_of(walk)
    per_command, whole = expectations(walk, commands, captured=compare)
    vary = [d.argument for d in walk.of("vary")]
    session = Session(folder, session_env(folder, env))
    try:
        for index, command in enumerate(commands):
            if key(command).startswith("buildflow destroy"):
                session.stop_background()
            if runs_until_interrupted(command):
                session.start(command)
                continue
            wanted = per_command.get(index, [])
            deadline = time.monotonic() + POLL_TIMEOUT_S
            while True:
                result = session.run(command)
                missing = missing_in(wanted, result.output, vary)
                if result.returncode == 0 and not missing:
                    break
                if not session.background or time.monotonic() > deadline:
                    _fail(walk, command, result, missing, session)
                session.results.pop()  # a poll while a background run works: try again
                time.sleep(1.0)  # bounded poll interval (the run writes in its own time)
        session.stop_background()
        if not compare:
            return session.results
        for index, command in enumerate(commands):
            if runs_until_interrupted(command):
                result = next(r for r in session.results if r.command == command)
                missing = missing_in(per_command.get(index, []), result.output, vary)
                if result.returncode != 0 or missing:
                    _fail(walk, command, result, missing, session)
        if whole:
            everything = "\n".join(r.output for r in session.results)
            missing = missing_lines("\n".join(whole), everything, vary)
            if missing:
                raise AssertionError(
                    f"walkthrough {walk.name!r}: the captured output's lines {missing} are not in what it "
                    f"printed:\n{everything}"
                )
    finally:
        session.close()
    return session.results


def transcript(results: Sequence[Result]) -> str:
    """``$ command`` and its output, for each result: the form of the README's captured sessions.

    To refresh the quick start's::

        PYTHONPATH=$PWD .venv/bin/python -c "import tempfile, pathlib; from tests import walkthroughs as w
        root = pathlib.Path(tempfile.mkdtemp())
        print(w.transcript(w.run_walkthrough('quickstart', root, compare=False)))"
    """
    return "\n".join(f"$ {key(r.command)}\n{r.output.rstrip()}\n" for r in results)


def _fail(walk: Walkthrough, command: str, result: Result, missing: list[str], session: Session) -> None:
    other = session.background_output()
    raise AssertionError(
        f"walkthrough {walk.name!r}: `{key(command)}` exited {result.returncode}"
        + (f"; missing lines (in order): {missing}" if missing else "")
        + f"\n--- its output:\n{result.output}"
        + (f"\n--- background run so far:\n{other}" if other else "")
    )


# ------------------------------------------------------------------------------------------
# Python blocks: run like a REPL, the result of an expression compared with its comment
# ------------------------------------------------------------------------------------------


def python_claims(source: str) -> Iterator[tuple[ast.stmt, str | None]]:
    """Each top-level statement of ``source`` and the claim its trailing comment makes about
    its value: a repr (``[Prediction(label='Ankle boot', ...), ...]``), after an optional
    ``prose: `` prefix; None for prose or no comment."""
    source = textwrap.dedent(source)
    lines = source.splitlines()
    for statement in ast.parse(source).body:
        end = statement.end_lineno or statement.lineno
        comment = lines[end - 1][len(strip_comment(lines[end - 1])) :].strip()
        claim = None
        if isinstance(statement, ast.Expr) and comment.startswith("#"):
            text = comment[1:].strip()
            candidates = [text] + [text.split(": ", 1)[1]] if ": " in text else [text]
            claim = next(
                (c for c in candidates if re.match(r"^([\[\('\"{\d]|-\d|\w+\(|(True|False|None)$)", c)), None
            )
        yield statement, claim


def run_python_block(source: str, cwd: Path) -> list[tuple[str, str, str]]:
    """Run ``source`` statement by statement in ``cwd``; return ``(statement, claim, repr)``
    for each claim that does not match (doctest's ELLIPSIS rules: ``...`` matches anything)."""
    checker = doctest.OutputChecker()
    namespace: dict[str, Any] = {"__name__": "__readme__"}
    wrong = []
    here = Path.cwd()
    os.chdir(cwd)
    try:
        for statement, claim in python_claims(source):
            code = ast.unparse(statement)
            if isinstance(statement, ast.Expr):
                value = eval(compile(ast.Expression(statement.value), "<README>", "eval"), namespace)
                if claim is not None and not checker.check_output(
                    claim + "\n", repr(value) + "\n", doctest.ELLIPSIS
                ):
                    wrong.append((code, claim, repr(value)))
            else:
                exec(compile(ast.Module([statement], []), "<README>", "exec"), namespace)
    finally:
        os.chdir(here)
    return wrong
