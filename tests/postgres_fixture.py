"""A real PostgreSQL server for the test session, on a free port of 127.0.0.1.

Use it from a conftest.py::

    from tests.postgres_fixture import postgres_server  # noqa: F401

``postgres_server`` runs Debian's PostgreSQL (``/usr/lib/postgresql/<version>/bin``, from
``./setup.sh``) out of a scratch folder: ``initdb`` as the ``postgres`` system user (initdb
refuses to run as root), then ``pg_ctl start`` with ``listen_addresses=127.0.0.1``, the
free port, and its unix socket in that folder. Socket connections are trusted (the fixture
uses them to create the test role); TCP connections need a password (scram-sha-256), so the
DSN the tests use carries a real password, and masking it in messages and logs is tested
for real. The server is stopped with its own ``pg_ctl`` when the session ends; no other
PostgreSQL server on the machine is touched.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

__all__ = ["PostgresServer", "postgres_server", "find_postgres_bin"]

ROLE = "bf_test"
DATABASE = "bf_test"


def find_postgres_bin() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding ``initdb`` and ``pg_ctl``."""
    root = Path("/usr/lib/postgresql")
    if not root.is_dir():
        return None
    versions = sorted(
        (p for p in root.iterdir() if p.name.isdigit() and (p / "bin" / "initdb").exists()),
        key=lambda p: int(p.name),
    )
    return versions[-1] / "bin" if versions else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclasses.dataclass
class PostgresServer:
    """A PostgreSQL server this test session started.

    Attributes:
        bin_dir: Where ``pg_ctl`` is.
        root: Scratch folder: ``data/`` (the cluster), ``sock/`` (unix socket), ``server.log``.
        port: TCP port on 127.0.0.1.
        password: The password of role ``bf_test`` (tests check it never leaks).
    """

    bin_dir: Path
    root: Path
    port: int
    password: str
    run_as: str | None  # the system user that owns the cluster (None: the current user)

    @property
    def dsn(self) -> str:
        """``postgresql://bf_test:<password>@127.0.0.1:<port>/bf_test``."""
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "sock"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        proc = subprocess.run(cmd, cwd=self.root, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stdout}{proc.stderr}\n{log}"
            )

    def initdb(self) -> None:
        self._run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        )

    def start(self) -> None:
        """Start the server and wait until it accepts connections (``pg_ctl -w``)."""
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.socket_dir}"
        self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_path), "-o", opts, "-w", "start")

    def stop(self) -> None:
        """Stop the server (fast shutdown: open connections are closed) and wait for it."""
        self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def is_running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def superuser_connect(self, dbname: str = "postgres") -> Any:
        """A psycopg connection as superuser ``postgres`` over the unix socket (autocommit)."""
        import psycopg

        return psycopg.connect(
            host=str(self.socket_dir), port=self.port, user="postgres", dbname=dbname, autocommit=True
        )

    def create_role(self) -> None:
        from psycopg import sql

        with self.superuser_connect() as con:
            con.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(ROLE), sql.Literal(self.password)
                )
            )
            con.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(ROLE))
            )


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL server with role and database ``bf_test`` (password auth on TCP)."""
    pytest.importorskip("psycopg", reason='needs psycopg: run `pip install "psycopg[binary,pool]"`')
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed: run ./setup.sh (installs Debian's postgresql)")
    run_as: str | None = None
    if os.geteuid() == 0:  # initdb and postgres refuse to run as root
        run_as = "postgres"
        try:
            pw = pwd.getpwnam(run_as)
        except KeyError:
            pytest.fail("running as root but there is no 'postgres' system user (Debian's package makes it)")
    # Not under pytest's tmp dir: that is private to root, and the server runs as postgres.
    root = Path(tempfile.mkdtemp(prefix="buildflow-pg-"))
    server = PostgresServer(bin_dir, root, _free_port(), secrets.token_urlsafe(18), run_as)
    try:
        server.socket_dir.mkdir()
        if run_as:
            for p in (root, server.socket_dir):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        server.initdb()
        server.start()
        server.create_role()
        yield server
    finally:
        with contextlib.suppress(Exception):
            if server.is_running():
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
