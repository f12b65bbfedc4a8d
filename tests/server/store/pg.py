"""A throw-away PostgreSQL cluster for the test session (Debian's server binaries, no system service).

`initdb` into a fresh temporary folder, `pg_ctl start` on a free loopback port with the socket in
that folder, trust authentication for the one superuser `probewatch`; durability settings off
(fsync, synchronous_commit: a crash of a test cluster loses nothing anyone needs, and they do
not change concurrency semantics). As root (CI), the cluster runs as the `postgres` system user
that the Debian package creates (PostgreSQL refuses to run as root). `stop()` removes everything.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

SUPERUSER = "probewatch"


def server_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<major>/bin with initdb, pg_ctl and postgres, or None."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        path = Path(d)
        if all(os.access(path / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            try:
                found.append((int(path.parent.name), path))
            except ValueError:
                continue
    return max(found)[1] if found else None


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self) -> None:
        self.bin = server_bin()
        if self.bin is None:
            raise RuntimeError(
                "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin "
                "(make test installs them with deploy/scripts/ensure-postgresql.sh)"
            )
        self.prefix: list[str] = []
        self.owner: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self.owner = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("running as root and no 'postgres' user to run the test cluster as") from None
            self.prefix = ["setpriv", f"--reuid={self.owner.pw_uid}", f"--regid={self.owner.pw_gid}", "--clear-groups"]
        self.root = Path(tempfile.mkdtemp(prefix="probewatch-pg-"))
        self.data, self.sock, self.log = self.root / "data", self.root / "sock", self.root / "server.log"
        self.sock.mkdir()
        if self.owner is not None:
            for p in (self.root, self.sock):
                os.chown(p, self.owner.pw_uid, self.owner.pw_gid)
        self.port = 0
        self.version = self.bin.parent.name

    def _run(self, *argv: str, timeout: float = 120) -> None:
        env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        result = subprocess.run(
            [*self.prefix, *argv], capture_output=True, text=True, timeout=timeout, env=env, cwd=self.root
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(argv[:2])} failed ({result.returncode}): {result.stderr[-2000:]}\n{log}")

    def start(self) -> PostgresServer:
        assert self.bin is not None
        self._run(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        self.port = free_port()
        options = (
            f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={SUPERUSER} dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if self.port and self.bin is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)
