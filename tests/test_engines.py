"""The job on real engines: an embedded Flink, a standalone Flink cluster, and Prism.

Each test runs the job through ``pipeline.main.main`` with the engine's runner flags and
compares the sorted event bytes (eventIds included) with the DirectRunner's on the same
input. The engines are started once per session by the fixtures in ``conftest.py``
(every process on a free loopback port, stopped by its PID; logs in the failure message).

Run one engine's tests with ``-m flink``, ``-m flink_cluster`` or ``-m prism``.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess
import sys

import pytest

from pipeline.main import main
from tests.conftest import local_stream
from tests.support.landing import SNAPSHOTS, events_by_profile, merge, run_landing_scenario
from tools.kinesalite import read_all_records
from tools.sample_data import write_snapshots
from tools.stream_check import (
    NUMBERED_CONFIG,
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
    read_lines,
    write_numbered_snapshots,
)

pytestmark = [
    pytest.mark.integration,
    # At the end of every portable job, the SDK's data plane thread logs gRPC's
    # "Multiplexer hanging up" as it is cancelled: noise, not a failure.
    pytest.mark.filterwarnings(
        "ignore:Exception in thread read_grpc_client_inputs:"
        "pytest.PytestUnhandledThreadExceptionWarning"
    ),
]

# Flink jobs take a few seconds to start and to stop: a longer watch than the local one.
ENGINE_MAX_WATCH_SECONDS = 45
_SUMMARY_ROW = re.compile(r"^  (\S.*?)\s{2,}(\d+)$")


def engine_args(request: pytest.FixtureRequest, engine: str) -> tuple[list[str], str]:
    """The runner flags of ``engine`` and the logs to show when its run fails."""
    if engine == "prism":
        return [
            "--runner",
            "PrismRunner",
            "--prism_location",
            request.getfixturevalue("prism_location"),
        ], ""
    services = request.getfixturevalue("flink_embedded" if engine == "flink" else "flink_cluster")
    return services.pipeline_args(parallelism=2), services.logs()


def summary(text: str) -> dict[str, int]:
    """The run summary's rows, by label."""
    return {m[1]: int(m[2]) for m in map(_SUMMARY_ROW.match, text.splitlines()) if m}


def run_backfill(data, out, *extra, in_process=True) -> tuple[list[bytes], dict[str, int]]:
    """Runs the backfill; returns its sorted event lines and its run summary.

    ``in_process=False`` runs ``python -m pipeline`` as a child process: a Prism job
    server started in this process would stay up and serve later tests' default
    ``beam.Pipeline()`` runs (Beam's DirectRunner prefers a running Prism).
    """
    argv = [
        "--config",
        str(data / "activation.json"),
        "--input",
        str(data / "input" / "snapshot=*" / "part-*.avro"),
        "--baseline",
        str(data / "baseline" / "snapshot=*" / "part-*.avro"),
        "--output_path",
        str(out / "events"),
        "--dead_letter_path",
        str(out / "dead"),
        *extra,
    ]
    if in_process:
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = main(argv)
        output, errors = stdout.getvalue(), ""
    else:
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", *argv],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        code, output, errors = result.returncode, result.stdout, result.stderr[-3000:]
    assert code == 0, errors
    return sorted(read_lines(str(out / "events"))), summary(output)


@pytest.fixture(scope="session")
def backfill(tmp_path_factory):
    """Sample snapshots (first one as the baseline) and the DirectRunner's events of them.

    The data has every kind of transition: entries, exits by status, exits by
    disappearance and by tombstone (checked on the DirectRunner's summary).
    """
    data = tmp_path_factory.mktemp("backfill")
    write_snapshots(str(data / "all"), profiles=300, snapshots=4, parts=3)
    days = sorted(p.name for p in (data / "all").glob("snapshot=*"))
    (data / "baseline").mkdir()
    shutil.move(str(data / "all" / days[0]), str(data / "baseline" / days[0]))
    shutil.move(str(data / "all" / "activation.json"), str(data / "activation.json"))
    (data / "all").rename(data / "input")
    return data


def test_backfill_reference_has_every_kind_of_transition(backfill, tmp_path):
    events, rows = run_backfill(backfill, tmp_path)
    assert events and rows["events"] == len(events)
    assert rows["profiles exited by absence"] > 0, "no exit by disappearance in the data"
    assert rows["profiles deleted (tombstones)"] > 0, "no tombstone in the data"
    assert rows["segment exits (exited)"] > rows["profiles exited by absence"]


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("flink", marks=pytest.mark.flink),
        pytest.param("flink_cluster", marks=pytest.mark.flink_cluster),
        pytest.param("prism", marks=pytest.mark.prism),
    ],
)
def test_backfill_events_equal_the_direct_runners(engine, backfill, tmp_path, request):
    direct, direct_rows = run_backfill(backfill, tmp_path / "direct")
    args, logs = engine_args(request, engine)

    events, rows = run_backfill(backfill, tmp_path / engine, *args, in_process=engine != "prism")

    assert len(direct) > 300
    assert events == direct, logs
    # Beam's metrics reach the summary on every engine, with the same values.
    assert rows == direct_rows
    assert not list(tmp_path.glob(f"{engine}/dead*"))


@pytest.fixture(scope="session")
def direct_landing(kinesalite, tmp_path_factory):
    """The streaming scenario's events on the DirectRunner: ``(records, lines)``."""
    with local_stream(kinesalite) as (client, stream):
        records, lines, code = run_landing_scenario(
            tmp_path_factory.mktemp("landing-direct"), client, stream
        )
    assert code == 0
    return records, lines


@pytest.mark.parametrize(
    "engine",
    [
        pytest.param("flink", marks=pytest.mark.flink),
        pytest.param("prism", marks=pytest.mark.prism),
    ],
)
def test_streaming_from_a_landing_folder_equals_the_direct_runner(
    engine, direct_landing, kinesis_stream, tmp_path, request
):
    client, stream = kinesis_stream
    args, logs = engine_args(request, engine)

    records, lines, code = run_landing_scenario(
        tmp_path,
        client,
        stream,
        args,
        max_watch_seconds=ENGINE_MAX_WATCH_SECONDS,
        in_process=engine != "prism",  # Prism's launcher needs the main thread
    )

    assert code == 0, logs
    # The hand-derived events of every stage (TTL exits included), in per-profile order.
    assert events_by_profile(records) == merge(*SNAPSHOTS, "end")
    direct_records, direct_lines = direct_landing
    assert sorted(r["data"] for r in records) == sorted(r["data"] for r in direct_records)
    assert sorted(lines) == sorted(direct_lines)


@pytest.mark.flink_cluster
def test_kinesis_sink_on_the_cluster_loses_nothing_and_keeps_profile_order(
    flink_cluster, kinesis_stream, tmp_path
):
    client, stream = kinesis_stream
    profiles, snapshots = 1500, 3
    write_numbered_snapshots(str(tmp_path / "in"), profiles, snapshots, parts=4)
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(NUMBERED_CONFIG))

    code = main(
        [
            "--config",
            str(config),
            "--input",
            numbered_glob(str(tmp_path / "in")),
            "--kinesis_stream",
            stream,
            "--kinesis_region",
            "us-east-1",
            "--kinesis_endpoint_url",
            client.meta.endpoint_url,
            *flink_cluster.pipeline_args(parallelism=2),
        ]
    )

    assert code == 0, flink_cluster.logs()
    report = check_numbered_stream(
        read_all_records(client, stream), numbered_pairs(profiles, snapshots)
    )
    assert report.problems() == {}
    assert report.distinct == profiles * snapshots
    assert report.repeats == 0
