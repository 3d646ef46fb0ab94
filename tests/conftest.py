"""Shared pytest fixtures: a local kinesalite server, Kinesis streams and a fault proxy."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.local_kinesis import (
    KinesaliteServer,
    create_stream,
    delete_stream,
    local_client,
    start_kinesalite,
)
from tests.fault_proxy import FaultProxy

_stream_ids = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "integration: needs a local Kinesis server (kinesalite, started by fixture)"
    )
    config.addinivalue_line(
        "markers", "soak: long full-size run (~10 min); deselect with -m 'not soak'"
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
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local-test-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local-test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never probe instance metadata
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


@pytest.fixture
def kinesis_stream(kinesalite: KinesaliteServer, aws_local_env: None) -> Iterator[tuple[Any, str]]:
    """A fresh 4-shard stream: ``(client, stream_name)``; deleted afterwards."""
    client = local_client(kinesalite.endpoint_url)
    name = f"test-{os.getpid()}-{next(_stream_ids)}"
    create_stream(client, name, shards=4)
    try:
        yield client, name
    finally:
        delete_stream(client, name)


@pytest.fixture
def fault_proxy(kinesalite: KinesaliteServer) -> Iterator[FaultProxy]:
    """A fault-injecting proxy in front of the session's kinesalite (no fault armed)."""
    with FaultProxy(kinesalite.endpoint_url) as proxy:
        yield proxy
