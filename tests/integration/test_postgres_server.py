"""The embedded PostgreSQL server where the checkout lives in a folder others cannot enter (``/root``,
``mktemp -d``): as root the server runs as its own system user, which must still reach the binaries."""

from __future__ import annotations

import os
import stat

import pytest

from local.postgres import Postgres, bin_dir

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="as another user the server runs as that user: nothing to enter"),
]


@pytest.fixture
def closed_install():
    """The wheel's install folder as a 0700 folder above the binaries would leave it; restored after."""
    install = bin_dir().parent
    mode = stat.S_IMODE(install.stat().st_mode)
    install.chmod(mode & ~0o077)
    try:
        yield install
    finally:
        install.chmod(mode)


def test_a_new_cluster_is_created_when_a_folder_above_the_binaries_is_closed(tmp_path, closed_install):
    server = Postgres(tmp_path / "postgres")

    server.prepare(log=lambda *_: None)

    assert (server.data_dir / "PG_VERSION").exists()
    assert stat.S_IMODE(closed_install.stat().st_mode) & 0o001  # passable, still not listable by others
    assert not stat.S_IMODE(closed_install.stat().st_mode) & 0o004


@pytest.fixture
def new_system_user():
    """A system user name that does not exist yet; the user is removed after the test."""
    import pwd
    import secrets
    import subprocess

    name = f"price-pg-{secrets.token_hex(3)}"
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    yield name
    removed = subprocess.run(["userdel", name], capture_output=True, text=True, check=False)
    assert removed.returncode in (0, 6), removed.stderr  # 6: no such user (no process made it)


def test_the_first_use_from_several_processes_at_once_makes_one_user_they_all_run_as(tmp_path, new_system_user):
    """A new machine's first ``make test`` (three xdist workers) or ``make run`` beside it: every process
    creates the server's user if missing, at the same moment."""
    import pwd
    import subprocess
    import sys

    start = tmp_path / "start"
    script = (
        "import sys, time; from pathlib import Path; from local.postgres import Postgres\n"
        "while not Path(sys.argv[1]).exists(): time.sleep(0.001)\n"
        "Postgres(Path(sys.argv[2]), system_user=sys.argv[3]).prepare(log=lambda *_: None)\n"
    )
    folders = [tmp_path / f"postgres-{n}" for n in range(6)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(start), str(folder), new_system_user],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for folder in folders
    ]
    start.touch()
    outputs = [process.communicate(timeout=120)[0] for process in processes]

    assert [process.returncode for process in processes] == [0] * len(processes), outputs
    user = pwd.getpwnam(new_system_user)
    for folder in folders:
        assert (folder / "PG_VERSION").exists()
        assert folder.stat().st_uid == user.pw_uid
