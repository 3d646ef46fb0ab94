"""Recovery on a real Flink cluster: a bundle that fails after a partial send is retried.

Kinesis has no idempotent writes, so the promise under a runner's retries is: nothing
lost, per-profile order, and duplicates only as byte-identical repeats of an event
(same ``eventId``). This test makes the runner retry: a fault proxy in front of
kinesalite answers one PutRecords request with a fatal error after the sink has already
sent some records, the failing bundle fails its task, and Flink's restart strategy runs
the work again.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from pipeline.main import main
from tests.support.landing import Job
from tools.flink.services import (
    cancel_job,
    job_failovers,
    latest_checkpoint,
    running_job,
    start_taskmanager,
    stop_with_savepoint,
    taskmanagers_of,
)
from tools.kinesalite import read_all_records
from tools.procs import kill_pid
from tools.stream_check import (
    NUMBERED_CONFIG,
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
    snapshot_day,
    write_numbered_snapshots,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.recovery,
    pytest.mark.filterwarnings(
        "ignore:Exception in thread read_grpc_client_inputs:"
        "pytest.PytestUnhandledThreadExceptionWarning"
    ),
]


# Checkpoints every 2 s. The command line makes a checkpointed streaming job finish its
# bundles before each checkpoint barrier (--finish_bundle_before_checkpointing): with Beam
# 2.50's default, a bundle finished *inside* a checkpoint had its output buffered until
# the step's next element or watermark, and the watch's first step (one impulse, one
# watermark) then kept the watch's only element forever when the first checkpoint came
# during its first bundle: the watch never polled (every run at 1 s, one run in three at
# 10 s). See docs/operations/flink.md.
CHECKPOINT_MS = "2000"


def _arm_after(proxy, requests: int, stop: threading.Event) -> threading.Thread:
    """Arms one fatal PutRecords answer once ``requests`` PutRecords went through."""

    def watch() -> None:
        while not stop.is_set():
            if proxy.snapshot().put_records_requests >= requests:
                proxy.http_error(400, requests=1, code="AccessDeniedException")
                return
            time.sleep(0.01)  # polling the proxy's counter, not waiting for an outcome

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.flink_cluster
def test_a_bundle_failing_after_a_partial_send_is_retried_without_loss_or_disorder(
    flink_cluster, kinesis_stream, fault_proxy, tmp_path
):
    client, stream = kinesis_stream
    profiles, snapshots = 1500, 3
    write_numbered_snapshots(str(tmp_path / "in"), profiles, snapshots, parts=4)
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(NUMBERED_CONFIG))
    stop = threading.Event()
    armer = _arm_after(fault_proxy, requests=3, stop=stop)
    try:
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
                fault_proxy.endpoint_url,
                "--skip_stream_check",
                # A batch job restarts by the cluster's restart strategy (fixed-delay, 3
                # attempts, set by tools/flink): Beam 2.50 applies the retry flags to
                # streaming jobs only.
                *flink_cluster.pipeline_args(parallelism=2),
            ]
        )
    finally:
        stop.set()
        armer.join(5)

    assert code == 0, flink_cluster.logs()
    stats = fault_proxy.snapshot()
    assert stats.injected["http_400"] == 1, stats.injected  # the fault did happen
    report = check_numbered_stream(
        read_all_records(client, stream), numbered_pairs(profiles, snapshots)
    )
    # Nothing missing, nothing out of order, every repeat byte-identical to the first.
    assert report.problems() == {}
    assert report.distinct == profiles * snapshots
    # The retry re-sent what the failed attempt had already sent.
    assert report.repeats > 0
    print(f"repeats after the retry: {report.repeats} of {report.distinct} events")


# ------------------------------------- a TaskManager dies while the job is sending


def _land(staging, landing, k: int) -> None:
    """Moves numbered snapshot ``k`` into the watched folder, then writes its marker."""
    name = f"snapshot={snapshot_day(k)}"
    shutil.move(str(staging / name), str(landing / name))
    (landing / name / "_SUCCESS").write_text("")


def _seen(client, stream) -> tuple[list[dict], set[tuple[int, int]]]:
    records = read_all_records(client, stream)
    pairs = set()
    for record in records:
        event = json.loads(record["data"])
        pairs.add((int(event["identityMap"]["ecid"][0]["id"]), event["stats"]["snapshot"]))
    return records, pairs


def _wait_for_pairs(client, stream, want: set[tuple[int, int]], job, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        records, pairs = _seen(client, stream)
        if want <= pairs:
            return records
        assert job.is_alive(), f"the job ended (code {job.code}) before {what}"
        assert time.monotonic() < deadline, f"{what}: {len(want - pairs)} events missing"
        time.sleep(0.5)  # poll interval


@pytest.mark.flink_cluster
def test_a_taskmanager_killed_mid_stream_loses_nothing_and_invents_nothing(
    flink_cluster, kinesis_stream, fault_proxy, tmp_path
):
    client, stream = kinesis_stream
    profiles, snapshots = 3000, 3
    staging, landing = tmp_path / "staging", tmp_path / "landing"
    config = write_numbered_snapshots(str(staging), profiles, snapshots, parts=4)
    landing.mkdir()
    job = Job(
        [
            "--config",
            config,
            "--input",
            str(landing / "*" / "*.jsonl"),
            "--kinesis_stream",
            stream,
            "--kinesis_region",
            "us-east-1",
            "--kinesis_endpoint_url",
            fault_proxy.endpoint_url,
            "--skip_stream_check",
            "--streaming",
            "--watch_interval",
            "0.5",
            "--checkpointing_interval",
            CHECKPOINT_MS,
            "--state_backend",
            "filesystem",
            "--state_backend_storage_path",
            (tmp_path / "checkpoints").as_uri(),
            "--number_of_execution_retries",
            "10",
            "--execution_retry_delay",
            "2000",
            *flink_cluster.pipeline_args(parallelism=2),
        ]
    )
    rest = flink_cluster.rest_port
    job.start()
    killed_tm = None
    try:
        job_id = running_job(rest, timeout=120)
        _land(staging, landing, 0)
        _wait_for_pairs(client, stream, numbered_pairs(profiles, 1), job, 180, "snapshot 0")
        first_checkpoint_wait = time.monotonic() + 60
        while not latest_checkpoint(rest, job_id):  # a checkpoint holds snapshot 0's state
            assert time.monotonic() < first_checkpoint_wait, "no checkpoint completed"
            time.sleep(0.2)  # poll interval
        sent_before = fault_proxy.snapshot().put_records_entries
        _land(staging, landing, 1)
        # Kill a TaskManager while snapshot 1's events are being sent.
        deadline = time.monotonic() + 120
        while fault_proxy.snapshot().put_records_entries < sent_before + profiles // 3:
            assert time.monotonic() < deadline, "snapshot 1 was not being sent"
            time.sleep(0.01)  # polling the proxy's counter
        # A TaskManager that runs some of the job's tasks (the resource id is tm-<index>).
        victim = sorted(taskmanagers_of(rest, job_id))[-1]
        killed_tm = flink_cluster.pid_of(f"taskmanager-{victim.split('-')[-1]}")
        kill_pid(killed_tm)
        killed_at = time.monotonic()
        _wait_for_pairs(
            client, stream, numbered_pairs(profiles, 2), job, 300, "snapshot 1 after the kill"
        )
        recovered_s = time.monotonic() - killed_at
        assert job_failovers(rest, job_id) >= 1  # the job did fail over
        _land(staging, landing, 2)
        _wait_for_pairs(client, stream, numbered_pairs(profiles, 3), job, 180, "snapshot 2")
        checkpoint = latest_checkpoint(rest, job_id)
        cancel_job(rest, job_id)
        job.join(60)
    finally:
        if job.is_alive():
            cancel_job(rest, running_job(rest, timeout=5))
            job.join(60)
        if killed_tm is not None:
            # A replacement under a new resource id, for the tests that come after.
            start_taskmanager(flink_cluster, len(flink_cluster.services), quiet=True)

    records = read_all_records(client, stream)
    report = check_numbered_stream(records, numbered_pairs(profiles, snapshots))
    # Nothing missing or unexpected, per-profile order, repeats byte-identical.
    assert report.problems() == {}
    # No invented transition: after the first sight, every event of a profile is the
    # attribute change of a continuing member, never a second "realized".
    statuses = {
        entry["status"]
        for data in report.events
        for event in [json.loads(data)]
        if event["stats"]["snapshot"] > 0
        for entry in event["segmentMembership"]["ups"].values()
    }
    assert statuses == {"existing"}
    print(
        f"TaskManager killed: recovered and snapshot 1 complete {recovered_s:.1f} s after the "
        f"kill; repeats {report.repeats} of {report.distinct} events "
        f"({10_000 * report.repeats / report.distinct:.0f} per 10k); last checkpoint "
        f"{checkpoint.get('state_size', 0)} bytes"
    )


# ------------------------------------------------- stop with a savepoint, resume


def _streaming_job(config, landing, stream, endpoint, services, tmp_path, *extra):
    return Job(
        [
            "--config",
            config,
            "--input",
            str(landing / "*" / "*.jsonl"),
            "--kinesis_stream",
            stream,
            "--kinesis_region",
            "us-east-1",
            "--kinesis_endpoint_url",
            endpoint,
            "--streaming",
            "--watch_interval",
            "0.5",
            "--checkpointing_interval",
            CHECKPOINT_MS,
            "--state_backend",
            "filesystem",
            "--state_backend_storage_path",
            (tmp_path / "checkpoints").as_uri(),
            *services.pipeline_args(parallelism=2),
            *extra,
        ]
    )


@pytest.mark.flink_cluster
def test_stop_with_a_savepoint_and_resume_sends_what_an_uninterrupted_run_sends(
    flink_cluster, kinesis_stream, tmp_path
):
    client, stream = kinesis_stream
    profiles, snapshots = 500, 3
    staging, landing = tmp_path / "staging", tmp_path / "landing"
    config = write_numbered_snapshots(str(staging), profiles, snapshots, parts=2)
    landing.mkdir()
    rest = flink_cluster.rest_port
    endpoint = client.meta.endpoint_url
    first = _streaming_job(config, landing, stream, endpoint, flink_cluster, tmp_path)
    first.start()
    second = None
    try:
        job_id = running_job(rest, timeout=120)
        for k in (0, 1):
            _land(staging, landing, k)
            _wait_for_pairs(client, stream, numbered_pairs(profiles, k + 1), first, 180, f"{k}")
        savepoint = stop_with_savepoint(rest, job_id, (tmp_path / "savepoints").as_uri(), 120)
        first.join(120)
        assert not first.is_alive() and first.code == 0, first.code
        second = _streaming_job(
            config,
            landing,
            stream,
            endpoint,
            flink_cluster,
            tmp_path,
            "--savepoint_path",
            savepoint,
        )
        second.start()
        resumed_id = running_job(rest, timeout=120)
        _land(staging, landing, 2)
        _wait_for_pairs(client, stream, numbered_pairs(profiles, 3), second, 180, "snapshot 2")
        cancel_job(rest, resumed_id)
        second.join(60)
    finally:
        for job in (first, second):
            if job is not None and job.is_alive():
                cancel_job(rest, running_job(rest, timeout=5))
                job.join(60)

    report = check_numbered_stream(
        read_all_records(client, stream), numbered_pairs(profiles, snapshots)
    )
    assert report.problems() == {}
    print(f"stop with savepoint and resume: {report.repeats} repeats of {report.distinct} events")
    # The resumed job knew every profile: no "first sight" (realized) after snapshot 0.
    statuses = {
        entry["status"]
        for data in report.events
        for event in [json.loads(data)]
        if event["stats"]["snapshot"] > 0
        for entry in event["segmentMembership"]["ups"].values()
    }
    assert statuses == {"existing"}
