"""Stream shapes users have, beyond a provisioned stream named by its name.

A stream named by its ARN (cross-account writes), an on-demand stream that reshards by
itself. kinesalite has neither, so they run against moto in server mode
(tools/moto_server.py); what reached the stream is read back as a KCL 2.x consumer
reads it (tools/kcl/).
"""

from __future__ import annotations

import itertools

import boto3
import pytest

from pipeline.main import main
from tools.moto_server import start_moto
from tools.reshard import kcl_records
from tools.stream_check import (
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
    write_numbered_snapshots,
)
from transforms.kinesis.client import StreamCheckError, check_stream

pytestmark = pytest.mark.integration

REGION = "eu-west-1"
PROFILES, SNAPSHOTS = 1500, 2
_ids = itertools.count()


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = start_moto(tmp_path_factory.mktemp("moto") / "moto.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def kinesis(moto, aws_local_env, monkeypatch):
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    return boto3.client("kinesis", endpoint_url=moto.endpoint_url, region_name=REGION)


def _create(client, *, shards: int | None = None) -> tuple[str, str]:
    name = f"shape-{next(_ids)}"
    if shards is None:
        client.create_stream(StreamName=name, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    else:
        client.create_stream(StreamName=name, ShardCount=shards)
    client.get_waiter("stream_exists").wait(
        StreamName=name, WaiterConfig={"Delay": 0.05, "MaxAttempts": 600}
    )
    summary = client.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
    return name, summary["StreamARN"]


def _run(tmp_path, endpoint: str, stream_flag: list[str], *extra: str) -> tuple[int, str]:
    config = write_numbered_snapshots(str(tmp_path), profiles=PROFILES, snapshots=SNAPSHOTS)
    return main(
        [
            "--config",
            config,
            "--input",
            numbered_glob(str(tmp_path)),
            *stream_flag,
            "--kinesis_endpoint_url",
            endpoint,
            "--dead_letter_path",
            str(tmp_path / "out" / "dead"),
            # Many small requests, so that a reshard falls inside the write.
            "--kinesis_max_records_per_second",
            "1500",
            "--kinesis_aggregate",
            *extra,
        ]
    ), ""


def _assert_complete(client, stream: str) -> None:
    report = check_numbered_stream(
        kcl_records(client, stream), numbered_pairs(PROFILES, SNAPSHOTS)
    )
    assert report.problems() == {}, report.problems()
    assert report.distinct == PROFILES * SNAPSHOTS


def test_stream_arn_names_the_stream_in_every_call(tmp_path, kinesis, moto, capsys):
    name, arn = _create(kinesis, shards=2)
    # No --kinesis_region: the region is the ARN's.
    code, _ = _run(tmp_path, moto.endpoint_url, ["--kinesis_stream_arn", arn])
    assert code == 0, capsys.readouterr().err
    _assert_complete(kinesis, name)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kinesis_stream_arn", "arn:aws:kinesis:eu-west-1:12:stream/x"], "must look like"),
        (
            ["--kinesis_stream_arn", "arn:aws:kinesis:eu-west-1:123456789012:stream/x",
             "--kinesis_stream", "x"],
            "not both",
        ),
        (
            ["--kinesis_stream_arn", "arn:aws:kinesis:eu-west-1:123456789012:stream/x",
             "--kinesis_region", "us-east-1"],
            "differs from the region",
        ),
    ],
)
def test_stream_arn_usage_errors_are_one_line(tmp_path, capsys, flags, message):
    code = main(["--config", "c.json", "--input", "x", *flags])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2
    assert len(errors) == 1 and message in errors[0], err


def test_on_demand_stream_is_named_and_written_whole(tmp_path, kinesis, moto, capsys, caplog):
    # moto keeps routing records into a split shard's closed parent, so the reshards
    # themselves are tested on kinesalite (test_kinesis_resharding.py), where a record
    # lands in the open child, as on Kinesis.
    name, _ = _create(kinesis)
    with caplog.at_level("INFO", logger="transforms.kinesis.client"):
        code, _ = _run(tmp_path, moto.endpoint_url, ["--kinesis_stream", name])
    assert code == 0, capsys.readouterr().out
    assert any("on-demand" in r.getMessage() for r in caplog.records)
    _assert_complete(kinesis, name)


class _DeletingStream:
    """A DescribeStreamSummary answer no local server holds long enough to test."""

    def describe_stream_summary(self, **kwargs):
        return {"StreamDescriptionSummary": {"StreamStatus": "DELETING"}}


def test_a_stream_being_deleted_is_one_clear_error():
    with pytest.raises(StreamCheckError, match="is being deleted"):
        check_stream(_DeletingStream(), "s")
