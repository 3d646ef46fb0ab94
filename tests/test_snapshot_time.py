"""Snapshot time from the path: snapshot=, dt= and date= folders (docs/contract.md §2.3)."""

from __future__ import annotations

import json

import pytest

from tests.test_read import profile, read, write_jsonl
from transforms.snapshots.read import match_snapshot_files
from transforms.snapshots.snapshot_time import (
    SnapshotTimeError,
    require_snapshot_time,
    snapshot_time_from_path,
)
from transforms.snapshots.watch import LandedFile, LandedSnapshotLister

DAY = 86_400_000
JAN31 = 1706659200000  # 2024-01-31T00:00:00Z
JAN30, FEB01 = JAN31 - DAY, JAN31 + DAY


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("x/dt=2024-01-31/part-0.avro", JAN31),
        ("x/date=2024-01-31/part-0.avro", JAN31),
        ("s3://bucket/export/dt=2024-01-31/part-0003.avro", JAN31),
        ("gs://bucket/date=2024-01-31/part.parquet", JAN31),
        ("dt=2024-01-31/part.jsonl", JAN31),  # a relative path starting with the folder
        (r"C:\export\date=2024-01-31\part.json", JAN31),  # Windows separators
        ("x/dt=20240131/part.avro", JAN31),  # the compact Hive form
        ("x/date=20240131/part.avro", JAN31),
        ("x/dt=2024-02-29/part.avro", JAN31 + 29 * DAY),  # leap day
        # a dt=/date= folder nested deeper (e.g. under a table folder) still counts
        ("x/table=profiles/dt=2024-01-31/region=eu/part.avro", JAN31),
    ],
)
def test_dt_and_date_folders_resolve_to_midnight_utc(path, expected):
    assert snapshot_time_from_path(path) == expected
    assert require_snapshot_time(path) == expected


@pytest.mark.parametrize(
    ("path", "expected", "why"),
    [
        ("x/snapshot=2024-01-31/dt=2024-01-30/part.avro", JAN31, "snapshot= beats an inner dt="),
        ("x/dt=2024-01-30/snapshot=2024-01-31/part.avro", JAN31, "snapshot= beats an outer dt="),
        ("x/date=2024-01-30/snapshot=2024-01-31T06:00:00Z/p.avro", JAN31 + 6 * 3600_000, "time"),
        ("x/dt=2024-01-31/date=2024-01-30/part.avro", JAN31, "dt= beats date="),
        ("x/date=2024-01-30/dt=2024-01-31/part.avro", JAN31, "dt= beats date=, wherever"),
        ("x/dt=2024-01-31/export-2024-02-01.avro", JAN31, "a folder beats the file-name date"),
        ("x/date=2024-01-31/export_20240201T060000Z.avro", JAN31, "same for date="),
        ("x/dt=2024-01-31/y/dt=2024-02-01/part.avro", JAN31, "the outermost, like snapshot="),
        # only the deciding kind is read: a lower-precedence segment that is not a date
        # is ignored (paths with a snapshot= folder resolve exactly as before dt=/date=)
        ("x/snapshot=2024-01-31/dt=latest/part.avro", JAN31, "dt= not read under snapshot="),
        ("x/dt=2024-01-31/date=today/part.avro", JAN31, "date= not read under dt="),
    ],
)
def test_precedence_snapshot_then_dt_then_date_then_file_name(path, expected, why):
    assert snapshot_time_from_path(path) == expected, why


@pytest.mark.parametrize(
    "path",
    [
        "x/update=2024-01-31/part.avro",  # another key that ends in date=
        "x/mydt=2024-01-31/part.avro",
        "x/DT=2024-01-31/part.avro",  # keys are case-sensitive, like snapshot=
        "x/dt=latest",  # the file itself, not a folder: not read, not an error
        "x/part-dt=2024-01-31x/part.avro",
        "x/date=/part.avro",  # no value at all
    ],
)
def test_only_whole_lower_case_folder_segments_count(path):
    assert snapshot_time_from_path(path) is None


@pytest.mark.parametrize(
    ("path", "segment"),
    [
        ("x/dt=latest/part-2024-01-31.avro", "dt=latest"),  # never falls back to the name
        ("x/date=2024-02-30/part.avro", "date=2024-02-30"),  # no such day
        ("x/dt=2024-13-01/part.avro", "dt=2024-13-01"),
        ("x/dt=2024-01-31T06:00:00Z/part.avro", "dt=2024-01-31T06:00:00Z"),  # a day, not a time
        ("x/date=1706659200000/part.avro", "date=1706659200000"),  # digits are not epoch ms
        ("x/dt=2024-0131/part.avro", "dt=2024-0131"),  # mixed separators
        ("x/dt=24-01-31/part.avro", "dt=24-01-31"),
        ("x/dt= 2024-01-31/part.avro", "dt= 2024-01-31"),
    ],
)
def test_a_malformed_deciding_segment_is_an_error_naming_file_and_segment(path, segment):
    with pytest.raises(SnapshotTimeError) as caught:
        snapshot_time_from_path(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: path segment {segment} is not a date"), message
    assert "(YYYY-MM-DD or YYYYMMDD)" in message


def test_malformed_snapshot_segment_keeps_its_own_message():
    with pytest.raises(SnapshotTimeError, match="snapshot=last-week is not an ISO-8601 date"):
        snapshot_time_from_path("x/snapshot=last-week/dt=2024-01-31/part.avro")


def test_undated_path_error_lists_every_source():
    with pytest.raises(SnapshotTimeError) as caught:
        require_snapshot_time("x/part-0001.avro")
    message = str(caught.value)
    assert message.startswith("x/part-0001.avro: cannot resolve the snapshot time")
    for source in ("snapshot=<date>", "dt=<date>", "date=<date>", "2024-01-31 or 20240131"):
        assert source in message


def test_matching_checks_dt_and_date_folders_before_the_job_starts(tmp_path):
    good = tmp_path / "dt=2024-01-31" / "part.jsonl"
    bad = tmp_path / "date=yesterday" / "part.jsonl"
    for path in (good, bad):
        path.parent.mkdir()
        path.write_text("{}\n")
    files = match_snapshot_files([str(good)], False, None)
    assert [f.path for f in files] == [str(good)]
    # with or without --snapshot_time_field, a malformed folder is refused up front
    for field in (None, "exportedAt"):
        with pytest.raises(SnapshotTimeError, match=r"date=yesterday is not a date"):
            match_snapshot_files([str(tmp_path / "*" / "*.jsonl")], False, field)


def test_records_of_dt_and_date_folders_carry_their_snapshot_time(tmp_path):
    dt_path = str(tmp_path / "dt=2024-01-30" / "part.jsonl")
    date_path = str(tmp_path / "date=20240131" / "part.jsonl")
    both = str(tmp_path / "snapshot=2024-02-01" / "dt=2024-01-01" / "part.jsonl")
    write_jsonl(dt_path, [profile("a@x.com")])
    write_jsonl(date_path, [profile("b@x.com")])
    write_jsonl(both, [profile("c@x.com")])
    records, dead = read([dt_path, date_path, both])
    assert dead == []
    assert {k: r["snapshot_ms"] for k, r in records} == {
        "email:a@x.com": JAN30,
        "email:b@x.com": JAN31,
        "email:c@x.com": FEB01,
    }


def test_streaming_watch_lands_dt_and_date_folders_by_their_marker(tmp_path):
    # The watch groups files by their parent folder, whatever its name; its _SUCCESS
    # marker completes it, and the time comes from snapshot_time_from_path.
    landed = []
    for name, marker in (
        ("dt=2024-01-30", True),
        ("date=2024-01-31", True),
        ("dt=2024-02-01", False),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "part-0.jsonl").write_text(json.dumps(profile("a@x.com")) + "\n")
        if marker:
            (folder / "_SUCCESS").write_text("")
        landed.append(str(folder / "part-0.jsonl"))
    lister = LandedSnapshotLister([str(tmp_path / "*" / "*")])
    assert lister.list_complete() == [LandedFile(JAN30, landed[0]), LandedFile(JAN31, landed[1])]
    (tmp_path / "dt=2024-02-01" / "_SUCCESS").write_text("")
    assert lister.list_complete()[-1] == LandedFile(FEB01, landed[2])


def test_streaming_watch_skips_a_malformed_dt_folder_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "dt=latest"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("")
    (folder / "_SUCCESS").write_text("")
    lister = LandedSnapshotLister([str(tmp_path / "*" / "*")])
    with caplog.at_level("WARNING", logger="transforms.snapshots.watch"):
        assert lister.list_complete() == []
    assert any("dt=latest is not a date" in r.getMessage() for r in caplog.records)


def test_eight_digits_in_a_snapshot_folder_are_a_date_not_epoch_milliseconds():
    # Read as epoch ms, snapshot=20240131 would silently be 1970-01-01T05:37.
    assert snapshot_time_from_path("/in/snapshot=20240131/part-0.avro") == (
        snapshot_time_from_path("/in/snapshot=2024-01-31/part-0.avro")
    )
    with pytest.raises(SnapshotTimeError, match="snapshot=20240231"):
        snapshot_time_from_path("/in/snapshot=20240231/part-0.avro")
