"""Tests of the local Kinesis tooling (tools/kinesalite.py): install, server, CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tools import kinesalite as lk

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tools.kinesalite", *args],
        cwd=REPO,
        capture_output=True,
        timeout=120,
        check=False,
        **kwargs,
    )


def test_install_is_idempotent_and_pinned(kinesalite, monkeypatch):
    # The session fixture installed it already: from here on, no process may be started
    # (no npm run, no other command: when installed, the check is one file read).
    def no_process(args, *_, **__):
        raise AssertionError(f"started {args!r} although kinesalite is installed")

    monkeypatch.setattr(subprocess, "Popen", no_process)
    package_dir = lk.ensure_kinesalite()
    assert lk._installed_version(package_dir.parents[1]) == lk.KINESALITE_VERSION == "3.3.3"
    assert lk.ensure_kinesalite() == package_dir


def test_server_listens_on_loopback_only_and_answers(kinesalite):
    assert kinesalite.endpoint_url.startswith("http://127.0.0.1:")
    assert lk.local_client(kinesalite.endpoint_url).list_streams()["StreamNames"] is not None


def test_read_all_records_reads_every_shard_in_sequence_order(kinesalite):
    client = lk.local_client(kinesalite.endpoint_url)
    lk.create_stream(client, "local-read-order", shards=3)
    try:
        sent = [(f"key-{i % 17}", f"record-{i}".encode()) for i in range(300)]
        for start in range(0, 300, 100):
            client.put_records(
                StreamName="local-read-order",
                Records=[{"PartitionKey": k, "Data": d} for k, d in sent[start : start + 100]],
            )
        records = lk.read_all_records(client, "local-read-order")
        assert sorted((r["partition_key"], r["data"]) for r in records) == sorted(sent)
        assert len({r["shard_id"] for r in records}) == 3
        for shard in {r["shard_id"] for r in records}:
            seqs = [int(r["sequence_number"]) for r in records if r["shard_id"] == shard]
            assert seqs == sorted(seqs)
        for key in {k for k, _ in sent}:  # per key, the order written
            assert [r["data"] for r in records if r["partition_key"] == key] == [
                d for k, d in sent if k == key
            ]
    finally:
        lk.delete_stream(client, "local-read-order")


def test_cli_start_create_read_stop(tmp_path):
    pid_file, endpoint_file, out = tmp_path / "k.pid", tmp_path / "k.endpoint", tmp_path / "o"
    started = cli("start", "--pid-file", str(pid_file), "--endpoint-file", str(endpoint_file))
    assert started.returncode == 0, started.stderr
    pid = int(pid_file.read_text())
    endpoint = endpoint_file.read_text().strip()
    try:
        assert endpoint.startswith("http://127.0.0.1:")
        created = cli("create-stream", "--endpoint", endpoint, "--stream", "cli", "--shards", "2")
        assert created.returncode == 0, created.stderr
        client = lk.local_client(endpoint)
        client.put_records(
            StreamName="cli",
            Records=[{"PartitionKey": f"k{i}", "Data": f"line {i}".encode()} for i in range(20)],
        )
        read = cli("read", "--endpoint", endpoint, "--stream", "cli", "--out", str(out))
        assert read.returncode == 0, read.stderr
        assert sorted(out.read_bytes().splitlines()) == sorted(
            f"line {i}".encode() for i in range(20)
        )
        to_stdout = cli("read", "--endpoint", endpoint, "--stream", "cli")
        assert sorted(to_stdout.stdout.splitlines()) == sorted(out.read_bytes().splitlines())
    finally:
        stopped = cli("stop", "--pid-file", str(pid_file))
    assert stopped.returncode == 0, stopped.stderr
    assert (
        not Path(f"/proc/{pid}").exists()
        or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    )
    assert not pid_file.exists()


def test_cli_serve_runs_until_sigterm(tmp_path):
    endpoint_file = tmp_path / "endpoint"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.kinesalite",
            "serve",
            "--endpoint-file",
            str(endpoint_file),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        endpoint = proc.stdout.readline().decode().strip()  # printed once it answers
        assert endpoint == endpoint_file.read_text().strip()
        assert lk.local_client(endpoint).list_streams()["StreamNames"] == []
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    assert not endpoint_file.exists()


def test_stop_refuses_to_signal_a_foreign_pid(tmp_path):
    pid_file = tmp_path / "p"
    pid_file.write_text(f"{os.getpid()}\n")  # the test runner itself: must not be killed
    result = cli("stop", "--pid-file", str(pid_file))
    assert result.returncode == 0
    assert b"not a kinesalite process" in result.stderr
