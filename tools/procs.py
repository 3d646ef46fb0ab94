"""Local helper processes: free loopback ports, started with a log, stopped by PID.

Every process a script or test starts goes through :func:`spawn`: it gets its own
session (so a stop reaches its children), its output goes to a log file that is kept,
and :func:`stop_pid` stops it by the PID recorded at start, never by name.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

LOG_TAIL_LINES = 60


class ProcessError(RuntimeError):
    """A helper process did not start; the message holds the tail of its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when it does not exist)."""
    try:
        text = Path(log_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def spawn(
    cmd: Sequence[str],
    log_path: Path,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Starts ``cmd`` in its own session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_until(
    what: str,
    ready: Callable[[], bool],
    *,
    pid: int,
    log_path: Path,
    timeout: float,
    quiet: bool = False,
) -> None:
    """Polls ``ready()`` until it is true; fails at once if process ``pid`` died.

    Prints one line saying what it waits for (unless ``quiet``). On failure raises
    :class:`ProcessError` with the tail of the process's log.
    """
    if not quiet:
        print(f"    waiting for {what} (pid {pid}, log {log_path})", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    while not ready():
        if not pid_alive(pid):
            raise ProcessError(
                f"{what}: process {pid} exited during startup; log {log_path}:\n"
                f"{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise ProcessError(
                f"{what}: not ready after {timeout:.0f}s; log {log_path}:\n{log_tail(log_path)}"
            )
        time.sleep(0.2)  # poll interval


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A child that exited but was not reaped yet is a zombie: not alive.
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """Stops process ``pid`` and its session: SIGTERM, then SIGKILL after ``timeout``."""
    if not pid_alive(pid):
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)  # the process leads its own session (see spawn)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _reap(pid)
            if not pid_alive(pid):
                return
            time.sleep(0.1)


def kill_pid(pid: int) -> None:
    """Kills process ``pid`` alone with SIGKILL (a crash, not a stop) and reaps it."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 10
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)
