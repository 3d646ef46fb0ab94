"""Scale-out on one machine: the local runner with several worker processes (docs/contract.md §9).

``--direct_num_workers=2 --direct_running_mode=multi_processing`` makes the FnApiRunner run
bundles in two SDK worker subprocesses; the events must be exactly those of the
in-process run (same bytes, hence the same deterministic eventIds). That two workers
really ran is seen from outside the job: the processes the run starts are recorded.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions
from apache_beam.testing.util import BeamAssertException, assert_that

from pipeline.main import main
from pipeline.runners import OfflineDirectRunner
from tools.sample_data import write_snapshots

MULTI_PROCESS = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def run_events(tmp_path, name, *extra):
    """Runs the job on the sample snapshots; returns the event lines it wrote."""
    out = tmp_path / name / "events"
    code = main(
        [
            "--config",
            str(tmp_path / "snap" / "activation.json"),
            "--input",
            str(tmp_path / "snap" / "snapshot=*" / "part-*.avro"),
            "--output_path",
            str(out),
            *extra,
        ]
    )
    assert code == 0
    lines = []
    for path in glob.glob(f"{out}*"):
        with open(path, "rb") as handle:
            lines.extend(handle.read().splitlines())
    return lines


# How the FnApiRunner starts each SDK worker of --direct_running_mode=multi_processing.
SDK_WORKER_MODULE = "apache_beam.runners.worker.sdk_worker_main"


def record_started_processes(monkeypatch) -> list[subprocess.Popen]:
    """Records every process started through ``subprocess.Popen`` from now on."""
    started: list[subprocess.Popen] = []

    class RecordingPopen(subprocess.Popen):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return started


def sdk_workers(processes: list[subprocess.Popen]) -> list[subprocess.Popen]:
    return [p for p in processes if SDK_WORKER_MODULE in str(p.args)]


def test_two_worker_processes_give_the_same_events_as_one(tmp_path, capsys, monkeypatch):
    write_snapshots(str(tmp_path / "snap"), profiles=150, snapshots=3, parts=4)
    started = record_started_processes(monkeypatch)

    single = run_events(tmp_path, "single")
    assert sdk_workers(started) == []  # in-process: no worker process
    multi = run_events(tmp_path, "multi", *MULTI_PROCESS)
    workers = sdk_workers(started)

    # Two SDK worker processes ran the multi-process run, and ended cleanly with it.
    assert len({w.pid for w in workers}) == len(workers) == 2, [w.args for w in started]
    assert [w.returncode for w in workers] == [0, 0]
    assert len(single) > 150
    ids = [json.loads(line)["eventId"] for line in single]
    assert len(set(ids)) == len(ids)
    assert sorted(json.loads(line)["eventId"] for line in multi) == sorted(ids)
    assert sorted(multi) == sorted(single)
    assert "Run summary:" in capsys.readouterr().out


def _ran_outside(parent_pid):
    def check(pids):
        if not pids or parent_pid in pids:
            raise BeamAssertException(f"bundles ran in {sorted(set(pids))}, parent {parent_pid}")

    return check


def test_offline_runner_hands_the_worker_options_to_the_fnapi_runner():
    options = PipelineOptions(list(MULTI_PROCESS))
    assert options.view_as(DirectOptions).direct_running_mode == "multi_processing"
    pipeline = beam.Pipeline(runner=OfflineDirectRunner(), options=options)
    pids = pipeline | beam.Create(range(20)) | beam.Reshuffle() | beam.Map(lambda _: os.getpid())
    assert_that(pids, _ran_outside(os.getpid()))
    pipeline.run().wait_until_finish()
