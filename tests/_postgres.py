"""A throwaway PostgreSQL server for the tests, from Debian's ``postgresql`` package.

The server runs from a fresh ``initdb`` in a temporary folder, listening only on a Unix
socket in that folder (no TCP port), trust authentication, stopped and deleted at the end.
PostgreSQL refuses to run as root: as root, ``initdb`` and ``pg_ctl`` run as the
``postgres`` system user (``runuser -u postgres --``), which the package creates; the
folder is handed to that user. Otherwise they run as the current user.

Without PostgreSQL binaries the tests that need the server are skipped, except in CI
(``CI=true``), where they fail: ``.ci/run`` installs the package.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Where Debian puts the server binaries (newest version first).
_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def postgres_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: ``$PG_BINDIR``, Debian's newest, or PATH."""
    explicit = os.environ.get("PG_BINDIR")
    if explicit:
        return Path(explicit)
    found = sorted(glob.glob(_BIN_GLOB), key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in found:
        if (Path(folder) / "initdb").exists():
            return Path(folder)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _as_server_user(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield the URL of its ``postgres`` database; stop it."""
    bindir = postgres_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but no PostgreSQL binaries: .ci/run installs `postgresql`")
        pytest.skip("no PostgreSQL server binaries (apt-get install postgresql)")
    # as root, in /tmp (which the postgres user can reach), whatever TMPDIR says
    where = "/tmp" if os.geteuid() == 0 else None  # noqa: S108
    folder = Path(tempfile.mkdtemp(prefix="close-opps-pg-", dir=where))
    data, socket_dir = folder / "data", folder / "run"
    socket_dir.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(socket_dir, "postgres")
    env = {**os.environ, "LC_ALL": "C"}
    run = subprocess.run
    try:
        run(
            _as_server_user(
                [
                    str(bindir / "initdb"),
                    "-D",
                    str(data),
                    "-U",
                    "postgres",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )
        options = f"-k {socket_dir} -c listen_addresses='' -c fsync=off -c max_connections=200"
        run(
            _as_server_user(
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(data),
                    "-o",
                    options,
                    "-l",
                    str(folder / "server.log"),
                    "-w",
                    "-t",
                    "60",
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
            env=env,
            timeout=120,
        )
    except subprocess.CalledProcessError as exc:
        log = folder / "server.log"
        detail = log.read_text() if log.exists() else ""
        shutil.rmtree(folder, ignore_errors=True)
        raise RuntimeError(
            f"PostgreSQL did not start: {exc.stderr.decode(errors='replace')}\n{detail}"
        ) from exc
    try:
        yield f"postgresql://postgres@/postgres?host={socket_dir}"
    finally:
        run(
            _as_server_user([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            check=False,
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str) -> str:
    """A new empty database on the server; its URL."""
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # constant-form name
    return server_url.replace("/postgres?", f"/{name}?", 1)
