"""Progress lines: on a terminal or with --progress_interval, never with --quiet."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pipeline.main import main
from tools.sample_data import write_snapshots
from transforms import progress

_LINE = re.compile(r"^progress \d+ s: ([\d,]+) records read; .*events", re.M)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("progress") / "snap"
    write_snapshots(str(root), profiles=3000, snapshots=3, fmt="jsonl")
    return root


def _args(snap: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(snap / "activation.json"),
        "--input",
        str(snap / "snapshot=*" / "part-*.jsonl"),
        "--output_path",
        str(out),
        *extra,
    ]


def test_progress_lines_count_what_the_run_reads(snapshots, tmp_path, capsys):
    assert main(_args(snapshots, tmp_path / "out" / "e", "--progress_interval", "0.1")) == 0
    captured = capsys.readouterr()
    read = [int(n.replace(",", "")) for n in _LINE.findall(captured.err)]
    assert read, f"no progress line in:\n{captured.err[-2000:]}"
    total = int(re.search(r"records read\s+(\d+)", captured.out).group(1))
    assert read == sorted(read) and 0 < read[-1] <= total
    # The run leaves the process as it found it: no progress, no environment variable.
    assert not progress.enabled()


def test_quiet_prints_no_progress_line(snapshots, tmp_path, capsys):
    args = _args(snapshots, tmp_path / "out" / "e", "--progress_interval", "0.1", "--quiet")
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "progress " not in captured.err
    assert "Run summary:" in captured.out


def test_streaming_notes_each_folder_and_each_snapshot(snapshots, tmp_path, capsys):
    landing = tmp_path / "landing"
    folders = sorted(snapshots.glob("snapshot=*"))
    for folder in folders:
        shutil.copytree(folder, landing / folder.name)
    (landing / folders[-1].name / "_SUCCESS").unlink()  # the last one has not landed
    args = _args(
        landing,
        tmp_path / "out" / "e",
        "--progress_interval",
        "0.2",
        "--streaming",
        "--watch_interval",
        "0.2",
        "--max_watch_seconds",
        "4",
    )
    args[1] = str(snapshots / "activation.json")
    assert main(args) == 0
    err = capsys.readouterr().err
    for folder in folders[:-1]:
        assert f"watch: {landing / folder.name}: landed (" in err
    assert f"watch: {landing / folders[-1].name}: waiting for its _SUCCESS marker" in err
    events = sum(1 for p in (tmp_path / "out").glob("e*") for _ in p.open())
    noted = re.findall(r"^snapshot (\S+): ([\d,]+) events$", err, re.M)
    days = list(dict.fromkeys(day[:10] for day, _ in noted))
    assert days == [f.name[len("snapshot=") :] for f in folders[:-1]]
    # A snapshot's line repeats only while its events are still being counted (here at
    # a 0.2 s interval; at the default 10 s there is usually one): the last one holds.
    last = {day: int(count.replace(",", "")) for day, count in noted}
    assert sum(last.values()) == events > 0


def test_a_progress_line_estimates_the_time_left():
    before = dict.fromkeys(progress._NAMES, 0)
    now = dict(before, records_read=900, profiles_total=300, profiles=100, events=50)
    line = progress.format_line(now, before, window_s=10.0, elapsed_s=12.0)
    assert line.startswith("progress 12 s: 900 records read; 100 of 300 profiles; 50 events")
    # 200 profiles left at 10 profiles/s.
    assert line.endswith("5 events/s; about 20 s left")
