"""The redis-server a benchmark starts for itself: loopback, a directory of the run's own,
an append-only file fsynced every second (as a fleet should run it), stopped by its PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from bench.server import free_port

#: Seconds redis-server has to answer PING.
START_S = 10


def start(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A redis-server writing its append-only file in ``directory``, and its port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("this run needs redis-server (apt-get install redis-server)")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(directory),
         "--save", "", "--appendonly", "yes", "--appendfsync", "everysec"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        if command(port, "PING") == "+PONG":
            return proc, port
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError("redis-server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def command(port: int, *args: str) -> str:
    """The first line of Redis's reply to one command ("" if it did not answer)."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        payload += b"$%d\r\n%s\r\n" % (len(arg), arg.encode())
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(payload)
            return s.recv(4096).split(b"\r\n", 1)[0].decode()
    except OSError:
        return ""


def length(port: int, key: str) -> int:
    """LLEN of a list (a task queue); -1 if Redis did not answer."""
    reply = command(port, "LLEN", key)
    return int(reply[1:]) if reply.startswith(":") else -1
