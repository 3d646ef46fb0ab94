"""moto in server mode on a free loopback port, for AWS APIs that kinesalite lacks.

kinesalite has no ``StreamARN`` parameter, no on-demand streams, no ``UpdateShardCount``
and no STS; moto's server has them. It is started as a process of its own (stopped by
its PID, its log kept for failure messages), like kinesalite.

Usage::

    with start_moto(tmp_path / "moto.log") as moto:
        client = boto3.client("kinesis", endpoint_url=moto.endpoint_url, ...)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from tools.procs import free_port, port_open, spawn, stop_pid, wait_until


@dataclasses.dataclass
class MotoServer:
    """A running moto server: its endpoint, PID and log."""

    port: int
    pid: int
    log_path: Path

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_pid(self.pid)

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_moto(log_path: Path, timeout: float = 60.0) -> MotoServer:
    """Starts ``moto.server`` on 127.0.0.1 and waits until it listens."""
    port = free_port()
    proc = spawn(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log_path
    )
    try:
        wait_until(
            "moto server",
            lambda: port_open(port),
            pid=proc.pid,
            log_path=log_path,
            timeout=timeout,
            quiet=True,
        )
    except BaseException:
        stop_pid(proc.pid)
        raise
    return MotoServer(port, proc.pid, log_path)
