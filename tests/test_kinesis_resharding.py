"""A stream resharded during a write loses nothing for a KCL 2.x consumer (docs/design.md).

The job runs on the numbered data set (tools/stream_check.py) against kinesalite behind
the fault proxy, which splits a shard before one PutRecords request and merges two
adjacent shards before a later one: real SplitShard and MergeShards calls on the real
server, at known points of the write. Every shard is then read back, parents before
children, and deaggregated by the real KCL's ``AggregatorUtil`` (tools/kcl/), which drops
whole any aggregate holding a user record outside its shard's hash range.
"""

from __future__ import annotations

import itertools
import os

import pytest

from pipeline.main import main
from tools.kinesalite import create_stream, delete_stream, local_client
from tools.reshard import kcl_records, merge, split
from tools.stream_check import (
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
    write_numbered_snapshots,
)

pytestmark = pytest.mark.integration

PROFILES, SNAPSHOTS = 3000, 3
_ids = itertools.count()


@pytest.fixture
def two_shard_stream(kinesalite, aws_local_env):
    client = local_client(kinesalite.endpoint_url)
    name = f"reshard-{os.getpid()}-{next(_ids)}"
    create_stream(client, name, shards=2)
    try:
        yield client, name
    finally:
        delete_stream(client, name)


@pytest.mark.parametrize("aggregate", [True, False], ids=["aggregated", "plain"])
def test_split_and_merge_during_a_write_lose_nothing_for_a_kcl_reader(
    tmp_path, two_shard_stream, fault_proxy, capsys, aggregate
):
    client, stream = two_shard_stream
    config = write_numbered_snapshots(str(tmp_path), profiles=PROFILES, snapshots=SNAPSHOTS)
    done: list[str] = []
    fault_proxy.before_put_records(2, lambda: split(client, stream, 0, done))
    fault_proxy.before_put_records(4, lambda: merge(client, stream, -2, done))
    args = [
        "--config",
        config,
        "--input",
        numbered_glob(str(tmp_path)),
        "--kinesis_stream",
        stream,
        "--kinesis_endpoint_url",
        fault_proxy.endpoint_url,
        "--dead_letter_path",
        str(tmp_path / "out" / "dead"),
        # Many small requests, so that both reshards fall inside the write.
        "--kinesis_max_records_per_second",
        "4000",
    ]
    if aggregate:
        args.append("--kinesis_aggregate")
    code = main(args)
    out = capsys.readouterr().out
    assert code == 0, out
    assert done == ["split", "merge"], f"{fault_proxy.snapshot().put_records_requests} requests"
    records = kcl_records(client, stream)
    report = check_numbered_stream(records, numbered_pairs(PROFILES, SNAPSHOTS))
    assert report.problems() == {}, report.problems()
    assert report.distinct == PROFILES * SNAPSHOTS
    resent = [line for line in out.splitlines() if "re-sent after a reshard" in line]
    if aggregate:
        # The split lands aggregates built with the old map in a child shard: they are
        # re-sent, and the run summary says how many.
        assert len(resent) == 1 and int(resent[0].split()[-1]) > 0, out
    else:
        assert resent == [], out
