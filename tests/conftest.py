"""Shared pytest fixtures: a local kinesalite server, Kinesis streams and a fault proxy."""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from tools.fault_proxy import FaultProxy
from tools.flink.services import FlinkServices, start_cluster, start_embedded
from tools.kinesalite import (
    KinesaliteServer,
    create_stream,
    delete_stream,
    local_client,
    start_kinesalite,
)
from tools.prism import prism_binary

_stream_ids = itertools.count()
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "local-test-key",
    "AWS_SECRET_ACCESS_KEY": "local-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",  # never probe instance metadata
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs a local Kinesis server (kinesalite, started by fixture)"
    )
    config.addinivalue_line(
        "markers", "soak: long full-size run (~10 min); deselect with -m 'not soak'"
    )
    config.addinivalue_line(
        "markers", "flink: runs on a Flink job server with an embedded Flink (Java, Maven)"
    )
    config.addinivalue_line(
        "markers",
        "flink_cluster: runs on a standalone Flink cluster (JobManager, 2 TaskManagers, "
        "a Python worker pool)",
    )
    config.addinivalue_line("markers", "prism: runs on Prism, Beam's portable runner (Go)")
    config.addinivalue_line(
        "markers", "recovery: fault tests on the Flink cluster (retries, failover)"
    )


@pytest.fixture(scope="session")
def kinesalite() -> Iterator[KinesaliteServer]:
    """An in-memory kinesalite on 127.0.0.1 for the whole session; stopped at the end."""
    server = start_kinesalite()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def aws_local_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy credentials and region for the local server, through boto3's default chain."""
    for name, value in LOCAL_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.fixture
def kinesis_stream(kinesalite: KinesaliteServer, aws_local_env: None) -> Iterator[tuple[Any, str]]:
    """A fresh 4-shard stream: ``(client, stream_name)``; deleted afterwards."""
    with local_stream(kinesalite) as pair:
        yield pair


@pytest.fixture
def fault_proxy(kinesalite: KinesaliteServer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's kinesalite (no fault armed)."""
    with FaultProxy(kinesalite.endpoint_url) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def flink_embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkServices]:
    """A Flink job server with an embedded Flink, for LOOPBACK pipelines; stopped by PID."""
    services = start_embedded(tmp_path_factory.mktemp("flink-embedded"), quiet=True)
    try:
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="session")
def flink_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlinkServices]:
    """A standalone Flink cluster (2 TaskManagers of 2 slots), worker pool and job server."""
    # The SDK workers run the Kinesis sink: they get the local dummy credentials.
    services = start_cluster(
        tmp_path_factory.mktemp("flink-cluster"), worker_env=LOCAL_AWS_ENV, quiet=True
    )
    try:
        yield services
    finally:
        services.stop()


@pytest.fixture(scope="session")
def prism_location() -> str:
    """The path of a Prism binary of the installed Beam version (built once into .cache)."""
    return str(prism_binary(quiet=True))


@contextlib.contextmanager
def local_stream(kinesalite: KinesaliteServer) -> Iterator[tuple[Any, str]]:
    """A fresh 4-shard stream, and the local dummy AWS environment, for a ``with`` block.

    For session-scoped fixtures, which cannot use the function-scoped ``kinesis_stream``.
    """
    with pytest.MonkeyPatch.context() as patch:
        for name, value in LOCAL_AWS_ENV.items():
            patch.setenv(name, value)
        client = local_client(kinesalite.endpoint_url)
        name = f"test-{os.getpid()}-{next(_stream_ids)}"
        create_stream(client, name, shards=4)
        try:
            yield client, name
        finally:
            delete_stream(client, name)
