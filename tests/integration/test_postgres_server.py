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
