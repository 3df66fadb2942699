"""gcp-storage-emulator on loopback, as a subprocess the tests can stop and restart."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    def __init__(self, port: int | None = None, bucket: str = "spark-test"):
        self.port = port or free_port()
        self.bucket = bucket
        self.proc = None

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Emulator:
        exe = shutil.which("gcp-storage-emulator", path=str(Path(sys.executable).parent)) or "gcp-storage-emulator"
        self.proc = subprocess.Popen([exe, "start", "--host", "127.0.0.1", "--port", str(self.port), "--in-memory",
                                      "--default-bucket", self.bucket, "-q"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError("gcp-storage-emulator exited at start") from None
                time.sleep(0.1)
        raise RuntimeError("gcp-storage-emulator did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGCONT)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def freeze(self) -> None:
        """Stop the service without closing its port: connections are accepted by the kernel
        and never answered, as a storage service that hangs."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.killpg(self.proc.pid, signal.SIGCONT)

