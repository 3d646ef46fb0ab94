"""``--report PATH``: counts per snapshot and segment as JSON, and one offline HTML page.

The JSON is checked against figures computed independently of the pipeline (the event
file of the same run, the input files' line counts, and the conservation of members),
and the page is rendered in a real headless Chromium.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from pipeline.main import main
from tests.support.browser import load_page
from tools.sample_data import write_snapshots

PROFILES, SNAPSHOTS = 300, 3


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report") / "snap"
    write_snapshots(str(root), profiles=PROFILES, snapshots=SNAPSHOTS, fmt="jsonl")
    return root


def _args(snap: Path, *extra: str) -> list[str]:
    return [
        "--config",
        str(snap / "activation.json"),
        "--input",
        str(snap / "snapshot=*" / "part-*.jsonl"),
        *extra,
    ]


def _events(out: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in sorted(out.parent.glob(out.name + "*.jsonl"))
        for line in path.read_text(encoding="utf-8").splitlines()
    ]


def test_report_counts_equal_the_event_file_and_the_input(snapshots, tmp_path, capsys):
    out, report = tmp_path / "out" / "events", tmp_path / "report" / "run"
    assert main(_args(snapshots, "--output_path", str(out), "--report", str(report))) == 0
    assert f"report: {report}.html" in capsys.readouterr().out
    data = json.loads(Path(f"{report}.json").read_text())
    events = _events(out)
    assert events, "the run wrote no events"

    # Entries and exits per segment, summed over the snapshots, equal the event file's.
    from_file: Counter = Counter()
    for event in events:
        for namespace, by_id in event["segmentMembership"].items():
            for seg_id, item in by_id.items():
                from_file[(namespace, seg_id, item["status"])] += 1
    from_report: Counter = Counter()
    for segment in data["segments"]:
        key = (segment["namespace"], segment["id"])
        for row in segment["snapshots"]:
            from_report[(*key, "realized")] += row["realized"]
            from_report[(*key, "exited")] += row["exited"]
            assert row["exited"] == (
                row["exited_by_status"]
                + row["exited_by_disappearance"]
                + row["exited_by_tombstone"]
            )
    assert +from_report == +from_file
    # Each cause of exit occurs in the sample data, so the split is exercised.
    for cause in ("status", "disappearance", "tombstone"):
        assert sum(r[f"exited_by_{cause}"] for s in data["segments"] for r in s["snapshots"])

    # Members are conserved: members(T) = members(T-1) + entries(T) - exits(T).
    for segment in data["segments"]:
        members = 0
        for row in segment["snapshots"]:
            members += row["realized"] - row["exited"]
            assert row["members_after"] == members, (segment["id"], row)

    # Records per snapshot equal the input files' lines; events per snapshot sum to all.
    for entry in data["snapshots"]:
        folder = snapshots / f"snapshot={entry['snapshot'][:10]}"
        lines = sum(len(p.read_text().splitlines()) for p in folder.glob("part-*.jsonl"))
        assert entry["records"] == lines
    assert sum(s["events"] for s in data["snapshots"]) == len(events)

    # Identities activated per namespace equal the identities in the event file.
    identities: Counter = Counter()
    for event in events:
        for namespace, ids in event["identityMap"].items():
            identities[namespace] += len(ids)
    assert {i["namespace"]: i["activated"] for i in data["activation"]["identities"]} == (
        dict(identities)
    )
    assert data["activation"]["profiles_activated"] == len(events)
    assert data["dry_run"] is False
    assert data["summary"]["events"] == len(events)
    # The facts files are gone; only the two report files are left, owner-only.
    assert sorted(p.name for p in report.parent.iterdir()) == ["run.html", "run.json"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in report.parent.iterdir())


def test_a_dry_run_sends_nothing_and_shows_the_guard_that_would_stop(snapshots, tmp_path, capsys):
    # A truncated export: the last snapshot holds a tenth of the profiles.
    snap = tmp_path / "snap"
    shutil.copytree(snapshots, snap)
    last = sorted(snap.glob("snapshot=*"))[-1]
    lines = (last / "part-0000.jsonl").read_text().splitlines()
    for part in last.glob("part-*.jsonl"):
        part.unlink()
    (last / "part-0000.jsonl").write_text("\n".join(lines[: PROFILES // 10]) + "\n")
    report = tmp_path / "report" / "dry"
    assert main(_args(snap, "--report", str(report))) == 0
    captured = capsys.readouterr()
    assert "dry run: nothing was sent" in captured.out
    assert "a real run would stop at the mass-exit guard" in captured.err
    data = json.loads(Path(f"{report}.json").read_text())
    assert data["dry_run"] is True
    verdicts = [s["mass_exit_guard"]["verdict"] for s in data["snapshots"]]
    assert verdicts[-1] == "mass exit: the run stops"
    assert verdicts[1] == "ok"
    # Without the report the same input stops the run before anything is sent.
    assert main(_args(snap, "--output_path", str(tmp_path / "o" / "e"))) == 1
    assert "mass exit guard" in capsys.readouterr().err
    assert not list((tmp_path / "o").glob("e*.jsonl"))


def test_the_page_renders_offline_without_console_messages(snapshots, tmp_path):
    report = tmp_path / "report" / "page"
    assert main(_args(snapshots, "--report", str(report))) == 0
    page = Path(f"{report}.html")
    shot = tmp_path / "report-page.png"
    loaded = load_page(page, screenshot=shot)
    assert loaded.console_messages == []
    data = json.loads(Path(f"{report}.json").read_text())
    names = [s["name"] for s in data["segments"]]
    assert names and all(names)
    for name in names:
        assert name in loaded.dom
    assert loaded.dom.count("<svg") == len(names)
    # Self-contained: nothing is loaded from anywhere.
    for marker in ("src=", "href=", "@import", "url("):
        assert marker not in page.read_text()
    print(f"report page screenshot: {shot}")


def test_the_console_check_can_fail(tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>throw new Error('broken page')</script></body></html>")
    assert any("broken page" in m for m in load_page(page).console_messages)


def test_report_flag_errors(snapshots, tmp_path, capsys):
    assert main(_args(snapshots, "--report", str(tmp_path / "r"), "--streaming")) == 2
    assert "--report applies to batch runs" in capsys.readouterr().err
    # An existing report is not replaced without --overwrite.
    assert main(_args(snapshots, "--report", str(tmp_path / "r"))) == 0
    assert main(_args(snapshots, "--report", str(tmp_path / "r"))) == 2
    assert "exist already" in capsys.readouterr().err
    assert main(_args(snapshots, "--report", str(tmp_path / "r"), "--overwrite")) == 0
