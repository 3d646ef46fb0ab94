"""The Dataflow job, built offline (docs/contract.md §9): ``DataflowRunner`` in dry-run mode.

Nothing reaches Google Cloud: ``TestOptions.dry_run`` makes the runner stop after it
built the job (pipeline proto, environment, staged artifacts) and before any API call.
It is set in code: in Beam 2.77 the ``--dry_run`` flag takes a value without a type, so
even ``--dry_run False`` would be a (truthy) string.
"""

from __future__ import annotations

import json
import os
import tarfile

import apache_beam as beam
import pytest
from apache_beam.options import pipeline_options
from apache_beam.portability.api import beam_runner_api_pb2

pytest.importorskip(
    "apache_beam.runners.dataflow.internal.apiclient",
    reason="the gcp extra is not installed (pip install -e '.[gcp]')",
)

from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner  # noqa: E402

from pipeline.graph import build_pipeline  # noqa: E402
from pipeline.main import parse_args  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARDO_URN = "beam:transform:pardo:v1"
STAGING_ROLE_URN = "beam:artifact:role:staging_to:v1"
JOB_TYPE_BATCH, JOB_TYPE_STREAMING = 1, 2


def build_job(tmp_path, input_pattern, *mode_flags):
    """Builds the Dataflow job as the command line would; returns (runner, result)."""
    config = tmp_path / "activation.json"
    config.write_text(json.dumps({"segments": "*", "absent_profile_ttl": "2d"}))
    settings, activation, options = parse_args(
        [
            "--config",
            str(config),
            "--input",
            input_pattern,
            "--kinesis_stream",
            "audiences",
            "--kinesis_region",
            "eu-west-1",
            "--runner",
            "DataflowRunner",
            "--project",
            "my-project",
            "--region",
            "europe-west1",
            "--temp_location",
            "gs://my-bucket/tmp",
            "--staging_location",
            "gs://my-bucket/staging",
            "--setup_file",
            os.path.join(ROOT, "setup.py"),
            *mode_flags,
        ]
    )
    # Imported as a module attribute: pytest would try to collect a class named Test*.
    options.view_as(pipeline_options.TestOptions).dry_run = True
    runner = DataflowRunner()
    pipeline = beam.Pipeline(runner=runner, options=options)
    build_pipeline(pipeline, settings, activation)
    return runner, pipeline.run()


def pardo_payloads(runner):
    """Transform unique name -> ParDoPayload of every ParDo in the job's pipeline proto."""
    payloads = {}
    for transform in runner.proto_pipeline.components.transforms.values():
        if transform.spec.urn == PARDO_URN:
            payloads[transform.unique_name] = beam_runner_api_pb2.ParDoPayload.FromString(
                transform.spec.payload
            )
    return payloads


def has_step(names, label):
    """Whether a ParDo named ``label``, or one inside the composite ``label``, exists."""
    return any(name == label or name.startswith(label + "/") for name in names)


def staged_files(runner):
    """Staged name -> local path of every artifact of the job's environments."""
    staged = {}
    for environment in runner.proto_pipeline.components.environments.values():
        for dependency in environment.dependencies:
            if dependency.role_urn == STAGING_ROLE_URN:
                name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(
                    dependency.role_payload
                ).staged_name
                staged[name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(
                    dependency.type_payload
                ).path
    return staged


def assert_package_is_staged(runner):
    staged = staged_files(runner)
    # --setup_file: the project is built into an sdist staged as workflow.tar.gz, which
    # the Dataflow workers pip-install before running the job.
    assert "workflow.tar.gz" in staged, sorted(staged)
    with tarfile.open(staged["workflow.tar.gz"]) as sdist:
        names = {name.split("/", 1)[1] for name in sdist.getnames() if "/" in name}
    assert {
        "setup.py",
        "pipeline/graph.py",
        "transforms/segments/transitions.py",
        "transforms/snapshots/watch.py",
        "transforms/kinesis/sink.py",
    } <= names


def test_streaming_job_builds_offline_with_the_stateful_step_and_the_package(tmp_path):
    # Streaming does not list --input when the job is built: the bucket is never called.
    runner, result = build_job(
        tmp_path,
        "gs://landing-bucket/exports/snapshot=*/part-*.avro",
        "--streaming",
        "--enable_streaming_engine",
    )

    assert result.job.proto.type_ == JOB_TYPE_STREAMING
    assert (
        "enable_streaming_engine"
        in result.job.options.view_as(pipeline_options.DebugOptions).experiments
    )
    payloads = pardo_payloads(runner)
    [replay] = [p for name, p in payloads.items() if name.startswith("ComputeTransitions/Replay/")]
    # Bag-backed state and an event-time timer: what Dataflow's Streaming Engine serves.
    assert set(replay.state_specs) == {"profile", "buffer"}
    assert replay.state_specs["buffer"].HasField("bag_spec")
    assert {name: spec.time_domain for name, spec in replay.timer_family_specs.items()} == {
        "ts-wake": beam_runner_api_pb2.TimeDomain.EVENT_TIME
    }
    # The snapshot watch is Beam's Watch splittable DoFn (not the DirectRunner's root).
    [watch] = [
        p
        for name, p in payloads.items()
        if name.startswith("WatchSnapshots/") and p.restriction_coder_id
    ]
    assert watch.restriction_coder_id
    assert_package_is_staged(runner)


def test_batch_job_builds_offline_with_the_package(tmp_path):
    # A batch job lists its input files when it is built; local ones keep it offline.
    folder = tmp_path / "snapshot=2024-01-31"
    folder.mkdir()
    (folder / "part-0.avro").write_bytes(b"")
    runner, result = build_job(tmp_path, str(folder / "part-*.avro"))

    assert result.job.proto.type_ == JOB_TYPE_BATCH
    names = set(pardo_payloads(runner))
    assert has_step(names, "ComputeTransitions/Replay")
    assert has_step(names, "WriteToKinesis/PutRecords")
    # Local Avro files: the columnar path reads them into Arrow buckets.
    assert has_step(names, "ComputeTransitions/ReadSnapshotBuckets")
    assert not has_step(names, "WatchSnapshots")
    assert_package_is_staged(runner)


def test_batch_job_on_the_row_path_builds_offline(tmp_path):
    folder = tmp_path / "snapshot=2024-01-31"
    folder.mkdir()
    (folder / "part-0.avro").write_bytes(b"")
    runner, result = build_job(tmp_path, str(folder / "part-*.avro"), "--batch_path", "rows")

    assert result.job.proto.type_ == JOB_TYPE_BATCH
    names = set(pardo_payloads(runner))
    assert has_step(names, "ComputeTransitions/Replay")
    assert has_step(names, "ReadSnapshots")
