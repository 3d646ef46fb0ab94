"""Local Kinesis-compatible server tooling (kinesalite) for tests, benchmarks and run_local.sh.

Importable::

    from tools.kinesalite import start_kinesalite, create_stream, read_all_records

    with start_kinesalite() as server:
        client = local_client(server.endpoint_url)
        create_stream(client, "events", shards=4)
        ...
        records = read_all_records(client, "events")

and usable from shell scripts::

    python -m tools.kinesalite start --pid-file F --endpoint-file F2
    python -m tools.kinesalite create-stream --endpoint URL --stream NAME --shards 4
    python -m tools.kinesalite read --endpoint URL --stream NAME [--out FILE]
    python -m tools.kinesalite stop --pid-file F

kinesalite is installed from the npm registry, pinned, into a cache directory
(``<repo>/.cache/kinesalite``, or ``$KINESALITE_HOME``). The server runs in memory and only
listens on the loopback interface. The dummy credentials used here are for local endpoints
only; they are never pipeline options.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_LOGGER = logging.getLogger(__name__)

KINESALITE_VERSION = "3.3.3"
DEFAULT_REGION = "us-east-1"
_REPO_ROOT = Path(__file__).resolve().parents[1]

# The kinesalite CLI binds every interface and has no --host flag; this launcher binds
# 127.0.0.1 only, lets the OS choose a free port (no pick-then-bind race) and reports the
# port through a file that is renamed into place, so readers never see a partial write.
_LAUNCHER_JS = r"""
const [modPath, optsJson, readyFile] = process.argv.slice(1);
const fs = require('fs');
const opts = JSON.parse(optsJson);
const server = require(modPath)(opts);
server.on('error', (err) => { console.error(String(err)); process.exit(2); });
server.listen(opts.port, '127.0.0.1', () => {
  fs.writeFileSync(readyFile + '.tmp', String(server.address().port));
  fs.renameSync(readyFile + '.tmp', readyFile);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
"""


class LocalKinesisError(RuntimeError):
    """Raised when the local Kinesis server cannot be installed, started or used."""


def kinesalite_home() -> Path:
    """Returns the directory kinesalite is installed into (``$KINESALITE_HOME`` wins)."""
    env = os.environ.get("KINESALITE_HOME")
    return Path(env).expanduser().resolve() if env else _REPO_ROOT / ".cache" / "kinesalite"


def _installed_version(home: Path) -> str | None:
    package_json = home / "node_modules" / "kinesalite" / "package.json"
    try:
        return json.loads(package_json.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError):
        return None


def ensure_kinesalite(home: Path | None = None) -> Path:
    """Installs the pinned kinesalite into ``home`` unless it is already there.

    Idempotent and cheap when installed (one small file read). A file lock serialises
    concurrent installs, e.g. a test session and run_local.sh starting at once.

    Args:
        home: install prefix; defaults to :func:`kinesalite_home`.

    Returns:
        The kinesalite package directory (``home/node_modules/kinesalite``).

    Raises:
        LocalKinesisError: node/npm are missing or the install failed.
    """
    home = home or kinesalite_home()
    package_dir = home / "node_modules" / "kinesalite"
    if _installed_version(home) == KINESALITE_VERSION:
        return package_dir
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise LocalKinesisError("node and npm are required to run kinesalite; install nodejs")
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _installed_version(home) != KINESALITE_VERSION:  # another process may have won
            _LOGGER.info("Installing kinesalite %s into %s", KINESALITE_VERSION, home)
            cmd = [
                npm,
                "install",
                "--no-audit",
                "--no-fund",
                "--prefix",
                str(home),
                f"kinesalite@{KINESALITE_VERSION}",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            if proc.returncode != 0 or _installed_version(home) != KINESALITE_VERSION:
                raise LocalKinesisError(
                    f"npm install kinesalite@{KINESALITE_VERSION} failed "
                    f"(exit {proc.returncode}): {proc.stderr.strip()[-2000:]}"
                )
    return package_dir


def local_client(endpoint_url: str, region: str = DEFAULT_REGION) -> Any:
    """Returns a boto3 Kinesis client for a local endpoint.

    kinesalite accepts any signature but botocore refuses to sign without credentials, so
    dummy ones are used when the environment has none. Only for local servers.
    """
    import boto3
    from botocore.config import Config

    return boto3.client(
        "kinesis",
        endpoint_url=endpoint_url,
        region_name=region,
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "local"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "local"),
        config=Config(connect_timeout=2, read_timeout=30, retries={"total_max_attempts": 3}),
    )


def _wait_until_answering(endpoint_url: str, attempts: int = 50) -> None:
    """Polls ListStreams with bounded retries until the server answers."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = local_client(endpoint_url)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            client.list_streams(Limit=1)
            return
        except (BotoCoreError, ClientError) as exc:
            last = exc
            time.sleep(min(0.02 * (attempt + 1), 0.2))
    raise LocalKinesisError(f"kinesalite at {endpoint_url} did not answer: {last}")


class KinesaliteServer:
    """A running kinesalite process; a context manager that stops it on exit.

    Attributes:
        process: the node process.
        port: the TCP port on 127.0.0.1.
        endpoint_url: ``http://127.0.0.1:<port>``.
    """

    def __init__(self, process: subprocess.Popen, port: int, log_path: Path | None = None):
        self.process = process
        self.port = port
        self.endpoint_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> None:
        """Stops the server (SIGTERM, then SIGKILL after ``timeout`` seconds). Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)

    def __enter__(self) -> KinesaliteServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when the parent exits."""
    try:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux/glibc: rely on stop() and atexit
        pass


def _spawn(
    port: int | None,
    *,
    stream_ms: int,
    shard_limit: int,
    log_file: Any,
    detach: bool,
    startup_timeout: float,
) -> tuple[subprocess.Popen, int]:
    package_dir = ensure_kinesalite()
    node = shutil.which("node")
    if node is None:
        raise LocalKinesisError("node is required to run kinesalite")
    opts = {
        "port": port or 0,
        "createStreamMs": stream_ms,
        "deleteStreamMs": stream_ms,
        "updateStreamMs": stream_ms,
        "shardLimit": shard_limit,
    }
    with tempfile.TemporaryDirectory(prefix="kinesalite-") as tmp:
        ready = Path(tmp) / "port"
        proc = subprocess.Popen(
            [node, "-e", _LAUNCHER_JS, str(package_dir), json.dumps(opts), str(ready)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            start_new_session=detach,
            # An attached server dies with its parent, even a killed one (no orphans).
            preexec_fn=None if detach else _die_with_parent,
        )
        # Bounded polling for the ready file; the process exiting early is reported at once.
        deadline = time.monotonic() + startup_timeout
        while not ready.exists():
            if proc.poll() is not None:
                raise LocalKinesisError(
                    f"kinesalite exited during startup (code {proc.returncode})"
                )
            if time.monotonic() > deadline:
                proc.kill()
                raise LocalKinesisError(f"kinesalite did not start within {startup_timeout}s")
            time.sleep(0.01)
        bound_port = int(ready.read_text())
    try:
        _wait_until_answering(f"http://127.0.0.1:{bound_port}")
    except LocalKinesisError:
        proc.kill()
        raise
    return proc, bound_port


def start_kinesalite(
    port: int | None = None,
    *,
    stream_ms: int = 5,
    shard_limit: int = 10_000,
    startup_timeout: float = 30.0,
) -> KinesaliteServer:
    """Starts an in-memory kinesalite on 127.0.0.1 and waits until it answers.

    Args:
        port: TCP port; None lets the OS choose a free one.
        stream_ms: how long streams stay CREATING/DELETING/UPDATING (small: fast tests).
        shard_limit: account shard limit; high so many test streams can coexist.
        startup_timeout: seconds to wait for the server to listen.

    Returns:
        A :class:`KinesaliteServer` handle (also a context manager).
    """
    proc, bound = _spawn(
        port,
        stream_ms=stream_ms,
        shard_limit=shard_limit,
        log_file=subprocess.DEVNULL,
        detach=False,
        startup_timeout=startup_timeout,
    )
    _LOGGER.info("kinesalite listening on 127.0.0.1:%d (pid %d)", bound, proc.pid)
    server = KinesaliteServer(proc, bound)
    atexit.register(server.stop)
    return server


def create_stream(client: Any, stream: str, shards: int = 1, timeout: float = 30.0) -> None:
    """Creates a stream (if absent) and waits until it is ACTIVE."""
    try:
        client.create_stream(StreamName=stream, ShardCount=shards)
    except client.exceptions.ResourceInUseException:
        pass  # already exists: just wait for ACTIVE below
    delay = 0.05
    client.get_waiter("stream_exists").wait(
        StreamName=stream,
        WaiterConfig={"Delay": delay, "MaxAttempts": max(1, int(timeout / delay))},
    )


def delete_stream(client: Any, stream: str) -> None:
    """Deletes a stream; a missing stream is not an error."""
    with contextlib.suppress(client.exceptions.ResourceNotFoundException):
        client.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def list_shards(client: Any, stream: str) -> list[dict[str, Any]]:
    """Returns every shard of the stream (ListShards, paginated), sorted by shard id."""
    shards: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {"StreamName": stream}
    while True:
        page = client.list_shards(**kwargs)
        shards.extend(page["Shards"])
        token = page.get("NextToken")
        if not token:
            return sorted(shards, key=lambda s: s["ShardId"])
        kwargs = {"NextToken": token}


def read_all_records(client: Any, stream: str, max_empty_polls: int = 1000) -> list[dict[str, Any]]:
    """Reads every shard from TRIM_HORIZON to its end.

    A shard is drained when GetRecords returns no records with MillisBehindLatest == 0, or
    the shard is closed (NextShardIterator is None).

    Returns:
        Dicts ``{shard_id, sequence_number, partition_key, data}`` (data is bytes), grouped by
        shard (sorted by shard id) and in sequence order within a shard.

    Raises:
        LocalKinesisError: a shard kept reporting it is behind after ``max_empty_polls`` polls.
    """
    out: list[dict[str, Any]] = []
    for shard in list_shards(client, stream):
        shard_id = shard["ShardId"]
        iterator = client.get_shard_iterator(
            StreamName=stream, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
        )["ShardIterator"]
        empty_polls = 0
        while iterator is not None:
            resp = client.get_records(ShardIterator=iterator, Limit=10_000)
            records = resp["Records"]
            for rec in records:
                out.append(
                    {
                        "shard_id": shard_id,
                        "sequence_number": rec["SequenceNumber"],
                        "partition_key": rec["PartitionKey"],
                        "data": rec["Data"],
                    }
                )
            iterator = resp.get("NextShardIterator")
            if not records:
                if resp.get("MillisBehindLatest", 0) == 0:
                    break
                empty_polls += 1
                if empty_polls > max_empty_polls:
                    raise LocalKinesisError(f"shard {shard_id} of {stream} never drained")
    return out


# ----------------------------------------------------------------------------- CLI


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _is_kinesalite(pid: int) -> bool:
    """True if ``pid`` is a server this tool started: the node launcher or ``serve``."""
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if any(a.rstrip(b"/").endswith(b"node_modules/kinesalite") for a in args):
        return True
    return b"tools.kinesalite" in args and b"serve" in args


def _cmd_install(_: argparse.Namespace) -> int:
    print(ensure_kinesalite())
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    log_path = args.log_file or f"{args.pid_file}.log"
    with open(log_path, "ab") as log:
        proc, port = _spawn(
            args.port,
            stream_ms=args.stream_ms,
            shard_limit=args.shard_limit,
            log_file=log,
            detach=True,
            startup_timeout=args.startup_timeout,
        )
    endpoint = f"http://127.0.0.1:{port}"
    _write_atomic(args.pid_file, f"{proc.pid}\n")
    if args.endpoint_file:
        _write_atomic(args.endpoint_file, f"{endpoint}\n")
    print(endpoint)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    server = start_kinesalite(
        args.port,
        stream_ms=args.stream_ms,
        shard_limit=args.shard_limit,
        startup_timeout=args.startup_timeout,
    )
    # Turn SIGTERM into a normal exit so the finally block stops node and removes the files.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        if args.pid_file:
            _write_atomic(args.pid_file, f"{os.getpid()}\n")
        if args.endpoint_file:
            _write_atomic(args.endpoint_file, f"{server.endpoint_url}\n")
        print(server.endpoint_url, flush=True)
        server.process.wait()
        return server.process.returncode or 0
    except KeyboardInterrupt:
        return 0
    finally:
        server.stop()
        for path in (args.pid_file, args.endpoint_file):
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)


def _cmd_stop(args: argparse.Namespace) -> int:
    try:
        pid = int(Path(args.pid_file).read_text().strip())
    except (OSError, ValueError):
        print(f"no server pid in {args.pid_file}", file=sys.stderr)
        return 0
    if _is_kinesalite(pid) or args.force:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + args.timeout
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            # Not a sync sleep: bounded polling for the process to go away.
            time.sleep(0.05)
        if Path(f"/proc/{pid}").exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    else:
        print(f"pid {pid} is not a kinesalite process; not signalled", file=sys.stderr)
    with contextlib.suppress(OSError):
        os.unlink(args.pid_file)
    return 0


def _cmd_create_stream(args: argparse.Namespace) -> int:
    create_stream(local_client(args.endpoint, args.region), args.stream, args.shards)
    return 0


def _cmd_read(args: argparse.Namespace) -> int:
    records = read_all_records(local_client(args.endpoint, args.region), args.stream)
    out = open(args.out, "wb") if args.out else sys.stdout.buffer  # noqa: SIM115
    try:
        for rec in records:
            out.write(rec["data"] + b"\n")
    finally:
        if args.out:
            out.close()
        else:
            out.flush()
    print(f"read {len(records)} records from {args.stream}", file=sys.stderr)
    return 0


def _cmd_delete_stream(args: argparse.Namespace) -> int:
    delete_stream(local_client(args.endpoint, args.region), args.stream)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.kinesalite", description=__doc__.split("\n", 1)[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("install", help="install the pinned kinesalite").set_defaults(func=_cmd_install)

    def server_opts(p: argparse.ArgumentParser) -> None:
        p.add_argument("--port", type=int, default=None, help="default: a free port")
        p.add_argument("--stream-ms", type=int, default=5)
        p.add_argument("--shard-limit", type=int, default=10_000)
        p.add_argument("--startup-timeout", type=float, default=30.0)
        p.add_argument("--endpoint-file", help="write http://127.0.0.1:PORT here")

    p = sub.add_parser("start", help="start in the background; write pid and endpoint files")
    server_opts(p)
    p.add_argument("--pid-file", required=True)
    p.add_argument("--log-file", help="default: PID_FILE.log")
    p.set_defaults(func=_cmd_start)

    p = sub.add_parser("serve", help="run in the foreground until SIGINT/SIGTERM")
    server_opts(p)
    p.add_argument("--pid-file")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("stop", help="stop a server started with 'start'")
    p.add_argument("--pid-file", required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--force", action="store_true", help="signal the pid even if not kinesalite")
    p.set_defaults(func=_cmd_stop)

    for name, func in (
        ("create-stream", _cmd_create_stream),
        ("read", _cmd_read),
        ("delete-stream", _cmd_delete_stream),
    ):
        p = sub.add_parser(name)
        p.add_argument("--endpoint", required=True)
        p.add_argument("--stream", required=True)
        p.add_argument("--region", default=DEFAULT_REGION)
        if name == "create-stream":
            p.add_argument("--shards", type=int, default=1)
        if name == "read":
            p.add_argument("--out", help="write record data here, one per line (default stdout)")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return args.func(args)
    except LocalKinesisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
