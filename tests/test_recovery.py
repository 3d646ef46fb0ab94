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
import threading
import time

import pytest

from pipeline.main import main
from tools.kinesalite import read_all_records
from tools.stream_check import (
    NUMBERED_CONFIG,
    check_numbered_stream,
    numbered_glob,
    numbered_pairs,
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
                "--number_of_execution_retries",
                "2",
                "--execution_retry_delay",
                "500",
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
