"""Start a real, throwaway PostgreSQL server for tests (no mocks).

``start_postgres(tmp_dir)`` finds Debian's server binaries under
``/usr/lib/postgresql/*/bin`` (installing the ``postgresql`` package with apt-get when they are
missing and we are root), runs ``initdb`` into a fresh data directory, starts the server on a
free loopback port with fsync on, creates a database ``rekam`` and returns a
:class:`PgServer`. Authentication is ``trust`` for 127.0.0.1 only; the Unix socket lives in
the private data folder.

PostgreSQL refuses to run as root: as root, the cluster lives in a new directory under the
system temp folder owned by the ``postgres`` user (created by the Debian package), and
``initdb``/``pg_ctl`` run through ``runuser -u postgres --``.

When PostgreSQL cannot be made available, ``start_postgres`` raises
:class:`PostgresUnavailable`; the pytest fixtures turn that into a skip, except under
``CI=true`` where it is a failure.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PG_ROOT = Path("/usr/lib/postgresql")
DATABASE = "rekam"
SUPERUSER = "rekam"
_START_TIMEOUT_S = 60


class PostgresUnavailable(RuntimeError):
    """PostgreSQL binaries are missing and could not be installed."""


def in_ci() -> bool:
    """True when running under CI, where a missing PostgreSQL is an error, not a skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bin_dir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb, pg_ctl and postgres."""
    candidates = [
        d
        for d in PG_ROOT.glob("*/bin")
        if all((d / name).is_file() for name in ("initdb", "pg_ctl", "postgres"))
    ]
    return max(candidates, key=_version_key) if candidates else None


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def install_postgres() -> Path:
    """Install Debian's ``postgresql`` package (root only); returns the binaries' folder."""
    if not _is_root():
        raise PostgresUnavailable(
            "PostgreSQL server binaries are not installed under /usr/lib/postgresql and "
            "installing them needs root (apt-get install postgresql)"
        )
    if shutil.which("apt-get") is None:
        raise PostgresUnavailable("PostgreSQL is not installed and apt-get is not available")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    attempt = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
    if attempt.returncode != 0:
        # Package lists are probably missing or stale: refresh them once and retry.
        update = subprocess.run(
            ["apt-get", "update"], env=env, capture_output=True, text=True, check=False
        )
        attempt = subprocess.run(install, env=env, capture_output=True, text=True, check=False)
        if attempt.returncode != 0:
            tail = (update.stderr + attempt.stderr).strip().splitlines()[-5:]
            raise PostgresUnavailable(
                "apt-get install postgresql failed: " + " | ".join(tail or ["no output"])
            )
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("the postgresql package installed no server binaries")
    return bin_dir


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgServer:
    """A running throwaway PostgreSQL server."""

    bin_dir: Path
    base_dir: Path
    port: int
    run_as: Sequence[str]
    owns_base_dir: bool
    started_s: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        return self.base_dir / "server.log"

    def url_for(self, database: str) -> str:
        """SQLAlchemy URL of a database on this server."""
        return f"postgresql+psycopg://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def dsn_for(self, database: str) -> str:
        """psycopg connection string of a database on this server."""
        return f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname={database}"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``rekam`` database."""
        return self.url_for(DATABASE)

    def execute(self, sql: str, database: str = "postgres") -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        with psycopg.connect(self.dsn_for(database), autocommit=True) as conn:
            conn.execute(sql.encode())

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove its files."""
        if self._stopped:
            return
        self._stopped = True
        if (self.data_dir / "postmaster.pid").exists():
            subprocess.run(
                [
                    *self.run_as,
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    *("-D", str(self.data_dir), "-m", "fast", "-w", "-t", str(_START_TIMEOUT_S)),
                ],
                capture_output=True,
                check=False,
            )
        if self.owns_base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        else:
            shutil.rmtree(self.data_dir, ignore_errors=True)


def _run(cmd: Sequence[str], what: str) -> None:
    result = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")


def start_postgres(tmp_dir: Path) -> PgServer:
    """Start a fresh PostgreSQL server with a ``rekam`` database; stop it with ``.stop()``."""
    began = time.monotonic()
    bin_dir = find_bin_dir() or install_postgres()
    if _is_root():
        if shutil.which("runuser") is None:
            raise PostgresUnavailable("running as root but runuser is missing")
        try:
            pg_user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root but there is no 'postgres' system user to run the server"
            ) from None
        # pytest's tmp folders are private to root; the server needs a folder it owns.
        base_dir = Path(tempfile.mkdtemp(prefix="rekam-pg-"))
        os.chown(base_dir, pg_user.pw_uid, pg_user.pw_gid)
        run_as: list[str] = ["runuser", "-u", "postgres", "--"]
        owns_base_dir = True
    else:
        base_dir = Path(tmp_dir) / "postgres"
        base_dir.mkdir(parents=True, exist_ok=True)
        run_as = []
        owns_base_dir = False
    server = PgServer(bin_dir, base_dir, 0, run_as, owns_base_dir)
    try:
        _run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                *("-D", str(server.data_dir), "-U", SUPERUSER, "--auth=trust"),
                *("--encoding=UTF8", "--no-locale", "--no-sync"),
            ],
            "initdb",
        )
        hba = server.data_dir / "pg_hba.conf"
        # Written through the server user so ownership stays right when we are root.
        subprocess.run(
            [*run_as, "tee", str(hba)],
            input="# Rekam test server: trust on loopback TCP only\n"
            "host all all 127.0.0.1/32 trust\n",
            text=True,
            capture_output=True,
            check=True,
        )
        for attempt in range(3):
            server.port = free_port()
            options = " ".join(
                shlex.quote(o)
                for o in (
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    f"port={server.port}",
                    "-c",
                    f"unix_socket_directories={server.base_dir}",
                    "-c",
                    "fsync=on",
                    "-c",
                    "max_connections=200",
                )
            )
            result = subprocess.run(
                [
                    *run_as,
                    str(bin_dir / "pg_ctl"),
                    "start",
                    *("-D", str(server.data_dir), "-l", str(server.log_file)),
                    *("-w", "-t", str(_START_TIMEOUT_S), "-o", options),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode == 0:
                break
            if attempt == 2:
                raise RuntimeError(
                    f"pg_ctl start failed: {result.stderr.strip()}\n{server.log_tail()}"
                )
        server.execute(f'CREATE DATABASE "{DATABASE}"')
    except BaseException:
        server.stop()
        raise
    server.started_s = time.monotonic() - began
    return server


@contextlib.contextmanager
def fresh_database(server: PgServer, name: str) -> Iterator[str]:
    """Create an empty database for one test and drop it (forcibly) afterwards."""
    server.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.url_for(name)
    finally:
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
