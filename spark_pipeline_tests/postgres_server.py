"""A throwaway PostgreSQL server for tests (Debian's package: ``apt-get install postgresql``).

A fresh cluster in a temporary folder, listening on 127.0.0.1 only, with its unix socket in
that folder; password login on TCP for one superuser; stopped (``pg_ctl stop -m fast``) and
removed after. ``initdb``, ``postgres`` and ``pg_ctl`` refuse to run as root, so when the
tests run as root (CI containers) they run as the ``postgres`` system user the package
creates, through ``setpriv``, which execs: the PID we hold is the postmaster's own."""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

INSTALL_HINT = "PostgreSQL is not installed: apt-get install postgresql (make setup installs it)"
OWNER = "postgres"  # the system user Debian's package creates


def _version_key(path: str) -> tuple[int, ...]:
    """/usr/lib/postgresql/15/bin/initdb -> (15,); 9.6 -> (9, 6); a folder not named by a version sorts first."""
    version = Path(path).parent.parent.name
    return tuple(int(n) for n in re.findall(r"\d+", version)) or (-1,)


def bindir() -> Path | None:
    """PostgreSQL's programs: ``pg_config --bindir``, else the newest /usr/lib/postgresql/*/bin, else PATH.

    Only a folder that holds ``initdb`` counts (libpq-dev's pg_config may name a client-only folder)."""
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if out.returncode == 0 and (Path(out.stdout.strip()) / "initdb").is_file():
            return Path(out.stdout.strip())
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb and shutil.which("postgres", path=str(Path(initdb).parent)):
        return Path(initdb).parent
    return None


def unavailable_reason() -> str | None:
    """Why no server can be started here (a pytest.skip message), or None when one can."""
    if bindir() is None:
        return INSTALL_HINT
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(OWNER)
        except KeyError:
            return f"running as root and there is no '{OWNER}' user to run PostgreSQL as ({INSTALL_HINT})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """``with PostgresServer() as pg: pg.port, pg.user, pg.password, pg.db, pg.connect()``."""

    start_timeout = 60.0
    stop_timeout = 30

    def __init__(self, db: str = "spark", user: str = "spark"):
        self.bin = bindir()
        if self.bin is None:
            raise FileNotFoundError(INSTALL_HINT)
        self.user, self.db = user, db
        self.password = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.folder: Path | None = None
        self._log = None

    # -- running PostgreSQL's programs as the cluster's owner ---------------------------------------
    def _as_owner(self, cmd: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return cmd
        return ["setpriv", f"--reuid={OWNER}", f"--regid={OWNER}", "--init-groups", "--", *cmd]

    def _run(self, *cmd: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self._as_owner([str(self.bin / cmd[0]), *cmd[1:]]), cwd=self.folder,
                              capture_output=True, text=True, timeout=timeout)

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log_path(self) -> Path:
        return self.folder / "postgres.log"

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # -- lifecycle -----------------------------------------------------------------------------------
    def __enter__(self) -> PostgresServer:
        # Under the system temp folder (not pytest's, which is private to root): the owner must reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="spark-pg-"))
        try:
            self._init_cluster()
            self._start()
            self._create_database()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _init_cluster(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, OWNER, OWNER)
        os.chmod(self.folder, 0o700)
        pwfile = self.folder / "pwfile"
        pwfile.write_text(self.password + "\n")
        if os.geteuid() == 0:
            shutil.chown(pwfile, OWNER, OWNER)
        os.chmod(pwfile, 0o600)
        # TCP logins need the password; the unix socket in our private folder is trusted.
        done = self._run("initdb", "-D", str(self.data), "-U", self.user, f"--pwfile={pwfile}",
                         "--auth-host=scram-sha-256", "--auth-local=trust", "--encoding=UTF8", "--locale=C",
                         "--no-instructions")
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")

    def _start(self) -> None:
        for attempt in range(3):  # the free port may be taken between picking and binding it
            self.port = _free_port()
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in __exit__
            self.proc = subprocess.Popen(
                self._as_owner([str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.folder}",
                                "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]),
                cwd=self.folder, stdout=self._log, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                ready = subprocess.run([str(self.bin / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                        "-t", "2"], capture_output=True)
                if ready.returncode == 0:
                    return
                time.sleep(0.2)
            exited = self.proc.poll() is not None
            self._stop_server()
            self._log.close()
            if exited and "could not bind" in self.log_tail() and attempt < 2:
                continue
            why = "exited" if exited else f"was not ready within {self.start_timeout:.0f} s"
            raise RuntimeError(f"PostgreSQL {why}; its log:\n{self.log_tail()}")

    def connect(self, dbname: str | None = None, **kwargs):
        import psycopg2  # installed with dagster-postgres

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user, password=self.password,
                                dbname=dbname or self.db, connect_timeout=10, **kwargs)

    def _create_database(self) -> None:
        conn = self.connect(dbname="postgres")
        try:
            conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.db}"')
        finally:
            conn.close()

    def _stop_server(self) -> None:
        """Fast shutdown of the server this object started, then wait for its PID to exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        pid_file = self.data / "postmaster.pid"
        try:
            ours = pid_file.read_text().split("\n", 1)[0].strip() == str(proc.pid)
        except OSError:
            ours = False
        if ours:  # pg_ctl signals the PID in our data folder's postmaster.pid: checked to be the one we started
            try:
                self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", str(self.stop_timeout),
                          timeout=self.stop_timeout + 10)
            except subprocess.TimeoutExpired:
                pass
        else:  # still starting (no pid file yet): SIGINT is PostgreSQL's fast shutdown
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGQUIT)  # immediate shutdown
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def __exit__(self, *exc) -> None:
        try:
            self._stop_server()
        finally:
            if self._log is not None and not self._log.closed:
                self._log.close()
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                self.folder = None
