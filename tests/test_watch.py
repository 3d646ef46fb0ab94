"""The streaming watch of landing folders (transforms.snapshots.watch) and the per-bundle writer."""

from __future__ import annotations

import glob
import logging
import os

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to

from pipeline.runners import OfflineDirectRunner
from transforms.files import WriteFilePerBundle
from transforms.snapshots.watch import (
    LandedFile,
    LandedSnapshotLister,
    WatchLandedFiles,
    watermark_after,
)

DAY = 86_400_000
T1 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
T2, T3 = T1 + DAY, T1 + 2 * DAY


def land(root, day, names=("part-0.jsonl", "part-1.jsonl"), marker=True):
    """Writes a snapshot folder ``snapshot=<day>`` with empty files; returns their paths."""
    folder = root / f"snapshot={day}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        (folder / name).write_text("")
        paths.append(str(folder / name))
    if marker:
        (folder / "_SUCCESS").write_text("")
    return paths


def test_lister_takes_a_folder_only_once_its_marker_exists(tmp_path):
    first = land(tmp_path, "2024-01-01")
    second = land(tmp_path, "2024-01-02", marker=False)
    (tmp_path / "snapshot=2024-01-01" / ".part-2.jsonl.crc").write_text("")
    lister = LandedSnapshotLister([str(tmp_path / "*" / "*")])

    assert lister.list_complete() == [LandedFile(T1, p) for p in first]

    (tmp_path / "snapshot=2024-01-02" / "_SUCCESS").write_text("")
    assert lister.list_complete() == [LandedFile(T1, p) for p in first] + [
        LandedFile(T2, p) for p in second
    ]


def test_lister_returns_baseline_files_once_each_and_reads_every_pattern(tmp_path):
    first = land(tmp_path / "a", "2024-01-01")
    second = land(tmp_path / "b", "2024-01-02")
    baseline = land(tmp_path / "base", "2023-12-31", names=("part-0.jsonl",), marker=False)
    # An input pattern that also matches the baseline file: it is returned as the
    # baseline (no marker needed), not twice.
    lister = LandedSnapshotLister(
        [
            str(tmp_path / "a" / "*" / "*.jsonl"),
            str(tmp_path / "b" / "*" / "*.jsonl"),
            str(tmp_path / "base" / "*" / "*.jsonl"),
        ],
        baseline=[(baseline[0], T1 - DAY)],
    )
    assert lister.list_complete() == [LandedFile(T1 - DAY, baseline[0])] + [
        LandedFile(T1, p) for p in first
    ] + [LandedFile(T2, p) for p in second]


def test_lister_skips_unknown_and_undated_files_with_one_warning_each(tmp_path, caplog):
    land(tmp_path, "2024-01-01", names=("part-0.jsonl", "part-0.csv"))
    undated = tmp_path / "landing"
    undated.mkdir()
    (undated / "part-0.jsonl").write_text("")
    (undated / "_SUCCESS").write_text("")
    lister = LandedSnapshotLister([str(tmp_path / "*" / "*")])
    with caplog.at_level(logging.WARNING, logger="transforms.snapshots.watch"):
        listed = lister.list_complete()
        lister.list_complete()
    assert [f.path for f in listed] == [str(tmp_path / "snapshot=2024-01-01" / "part-0.jsonl")]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert any("part-0.csv: skipped: unknown file format" in w for w in warnings)
    assert any("landing/part-0.jsonl: skipped: no snapshot time" in w for w in warnings)


def test_poll_stamps_files_with_their_snapshot_time_and_sets_the_watermark_past_it(tmp_path):
    land(tmp_path, "2024-01-02", names=("part-0.jsonl",))
    land(tmp_path, "2024-01-01", names=("part-0.jsonl",))
    lister = LandedSnapshotLister([str(tmp_path / "*" / "*.jsonl")])

    result = lister(b"")

    assert [(o.value.rsplit("/", 2)[-2], o.timestamp.micros // 1000) for o in result.outputs] == [
        ("snapshot=2024-01-01", T1),
        ("snapshot=2024-01-02", T2),
    ]
    # The transitions step wakes at T + 1 ms: the watermark must be strictly past it,
    # also where a runner keeps it in whole seconds (Beam 2.50's Flink runner).
    assert result.watermark == watermark_after(T2)
    assert result.watermark.micros == (T2 + 1002) * 1000
    assert (result.watermark.micros // 1_000_000) * 1000 > T2 + 1


def test_poll_without_a_complete_folder_keeps_the_watermark(tmp_path):
    land(tmp_path, "2024-01-01", marker=False)
    result = LandedSnapshotLister([str(tmp_path / "*" / "*")])(b"")
    assert result.outputs == ()
    assert result.watermark is None


def test_a_poll_checks_the_marker_of_new_folders_only(tmp_path, monkeypatch):
    from apache_beam.io.filesystems import FileSystems

    checked = []
    real_exists = FileSystems.exists

    def counting_exists(path):
        checked.append(path.rsplit("/", 2)[-2])
        return real_exists(path)

    monkeypatch.setattr(FileSystems, "exists", staticmethod(counting_exists))
    land(tmp_path, "2024-01-01")
    land(tmp_path, "2024-01-02", marker=False)
    lister = LandedSnapshotLister([str(tmp_path / "*" / "*")])
    lister.list_complete()
    assert sorted(checked) == ["snapshot=2024-01-01", "snapshot=2024-01-02"]
    checked.clear()
    lister.list_complete()
    # The complete folder is known: only the one still waiting is checked again.
    assert checked == ["snapshot=2024-01-02"]
    (tmp_path / "snapshot=2024-01-02" / "_SUCCESS").write_text("")
    checked.clear()
    assert len(lister.list_complete()) == 4
    checked.clear()
    lister.list_complete()
    assert checked == []


def test_folders_far_behind_the_newest_snapshot_retire(tmp_path, caplog):
    old = land(tmp_path, "2024-01-01", names=("part-0.jsonl",))
    lister = LandedSnapshotLister([str(tmp_path / "*" / "*.jsonl")])
    assert [f.path for f in lister.list_complete()] == old
    # 31 days later: the old folder is beyond the lateness horizon (30 days).
    new = land(tmp_path, "2024-02-01", names=("part-0.jsonl",))
    assert [f.path for f in lister.list_complete()] == new
    assert [f.path for f in lister.list_complete()] == new
    # A file that appears in the retired folder is reported once, not read.
    (tmp_path / "snapshot=2024-01-01" / "part-9.jsonl").write_text("")
    with caplog.at_level(logging.WARNING, logger="transforms.snapshots.watch"):
        assert [f.path for f in lister.list_complete()] == new
        assert [f.path for f in lister.list_complete()] == new
    warnings = [r.getMessage() for r in caplog.records if "not read" in r.getMessage()]
    assert len(warnings) == 1 and "snapshot=2024-01-01: 1 file(s) appeared" in warnings[0]


def _timed(path, timestamp=beam.DoFn.TimestampParam):
    return path.rsplit("/", 2)[-2] + "/" + path.rsplit("/", 1)[-1], timestamp.micros // 1000


def _expected(*pairs):
    return [(f"snapshot={day}/{name}", ms) for day, name, ms in pairs]


def test_beam_watch_emits_each_complete_file_once_at_its_snapshot_time(tmp_path):
    """The portable path (Beam's Watch SDF, as on Dataflow/Flink), here on the FnApiRunner.

    The watch polls ~10 times; every file must come out exactly once.
    """
    land(tmp_path, "2024-01-01")
    land(tmp_path, "2024-01-02", names=("part-0.jsonl",))
    land(tmp_path, "2024-01-03", marker=False)
    pipeline = beam.Pipeline(runner=OfflineDirectRunner())
    paths = pipeline | WatchLandedFiles(
        [str(tmp_path / "*" / "*")], interval_seconds=0.1, max_watch_seconds=1.0
    )
    assert_that(
        paths | beam.Map(_timed),
        equal_to(
            _expected(
                ("2024-01-01", "part-0.jsonl", T1),
                ("2024-01-01", "part-1.jsonl", T1),
                ("2024-01-02", "part-0.jsonl", T2),
            )
        ),
    )
    pipeline.run().wait_until_finish()


def test_direct_runner_watch_in_streaming_mode_emits_each_complete_file_once(tmp_path):
    """The local streaming path: the watch root of the BundleBasedDirectRunner."""
    land(tmp_path, "2024-01-01")
    land(tmp_path, "2024-01-03", names=("part-0.jsonl",))
    land(tmp_path, "2024-01-02", marker=False)
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    pipeline = beam.Pipeline(runner=OfflineDirectRunner(), options=options)
    paths = pipeline | WatchLandedFiles(
        [str(tmp_path / "*" / "*")], interval_seconds=0.1, max_watch_seconds=1.0
    )
    assert_that(
        paths | beam.Map(_timed),
        equal_to(
            _expected(
                ("2024-01-01", "part-0.jsonl", T1),
                ("2024-01-01", "part-1.jsonl", T1),
                ("2024-01-03", "part-0.jsonl", T3),
            )
        ),
    )
    pipeline.run().wait_until_finish()


def test_watch_refuses_a_non_positive_interval():
    with pytest.raises(ValueError, match="interval"):
        WatchLandedFiles(["x/*"], interval_seconds=0)
    with pytest.raises(ValueError, match="max_watch_seconds"):
        WatchLandedFiles(["x/*"], max_watch_seconds=-1)


def test_write_file_per_bundle_writes_every_line_and_leaves_no_temporary_file(tmp_path):
    lines = [f'{{"n":{i}}}' for i in range(50)]
    pipeline = beam.Pipeline(runner=OfflineDirectRunner())
    _ = (
        pipeline
        | beam.Create(lines[:25] + [line.encode() for line in lines[25:]])
        | WriteFilePerBundle(str(tmp_path / "out" / "events"))
    )
    pipeline.run().wait_until_finish()
    files = glob.glob(str(tmp_path / "out" / "events-*.jsonl"))
    assert files
    written = []
    for path in files:
        with open(path, encoding="utf-8") as handle:
            written.extend(handle.read().splitlines())
    assert sorted(written) == sorted(lines)
    assert sorted(os.listdir(tmp_path / "out")) == sorted(os.path.basename(p) for p in files)
