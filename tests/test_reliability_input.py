"""Bad input through the whole job (docs/contract.md §7): what is dead-lettered, what fails, and how.

Every test runs the real command line (``pipeline.main.main`` in-process, or ``python -m
pipeline`` where the exact standard error matters) against kinesalite.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.main import main
from tests.support.dead_letter_schema import validate_dead_letters
from tools.kinesalite import read_all_records
from tools.sample_data import AVRO_SCHEMA, write_snapshots
from tools.stream_check import read_lines

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = "seg-a"
CONFIG = {"segments": [{"id": SEG}], "profile_key": "primary"}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def profile(email: str, status: str = "realized", when="2024-01-01T00:00:00Z", **extra) -> dict:
    record = {
        "identityMap": {"email": [{"id": email, "primary": True}]},
        "segmentMembership": {"ups": {SEG: {"status": status, "lastQualificationTime": when}}},
    }
    record.update(extra)
    return record


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` with this process's environment (AWS test variables)."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env=env or dict(os.environ),
        capture_output=True,
        text=True,
        timeout=180,
    )


def assert_one_error_line(stderr: str, *fragments: str) -> str:
    """The single ``error:`` line of a failed run; no traceback anywhere."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def summary(out: str) -> dict[str, int]:
    """The run summary printed by the job: label -> value."""
    values = {}
    for line in out.splitlines():
        label, _, value = line.strip().rpartition("  ")
        if value.isdigit():
            values[label.strip()] = int(value)
    return values


# Each malformed kind: (raw line, the dead letter's reason code, a fragment of its error).
MALFORMED = [
    (b"{not json", "invalid_json", "not valid JSON"),
    (
        b'{"identityMap": {"email": [{"id": "caf\xe9", "primary": true}]}}',
        "invalid_utf8",
        "not valid UTF-8",
    ),
    (
        json.dumps({"identityMap": {"email": [{"id": 42, "primary": True}]}}).encode(),
        "invalid_record",
        "string id",
    ),
    (
        json.dumps(profile("list@x.com") | {"segmentMembership": [{"ups": SEG}]}).encode(),
        "invalid_record",
        "segmentMembership is not a map",
    ),
    (
        json.dumps({"identityMap": {"email": {"id": "m@x.com", "primary": True}}}).encode(),
        "invalid_record",
        "identityMap.email is not a list",
    ),
    (
        json.dumps({"identityMap": {"ecid": [{"id": "1"}]}}).encode(),
        "no_profile_key",
        "no profile key",
    ),
    (
        json.dumps(profile("status@x.com", status="qualified")).encode(),
        "invalid_record",
        "unknown status",
    ),
    (
        json.dumps(profile("time@x.com", when="yesterday")).encode(),
        "invalid_record",
        "lastQualificationTime",
    ),
    (json.dumps([1, 2]).encode(), "invalid_record", "not an object"),
    (b'"just a string"', "invalid_record", "not an object"),
]


def test_malformed_records_dead_letter_and_the_good_ones_are_sent(
    tmp_path, kinesis_stream, kinesalite, capsys
):
    client, stream = kinesis_stream
    folder = tmp_path / "in" / "snapshot=2024-01-01"
    folder.mkdir(parents=True)
    jsonl = folder / "part-0.jsonl"
    good = [profile(f"good{i}@x.com") for i in range(3)]
    lines = [json.dumps(good[0]).encode()] + [raw for raw, _, _ in MALFORMED]
    lines.insert(5, json.dumps(good[1]).encode())
    jsonl.write_bytes(b"\n".join(lines) + b"\n")
    # The other formats dead-letter too, and their good records survive.
    avro = folder / "part-1.avro"
    avro_bad = profile("avro-bad@x.com", status="gone")
    with open(avro, "wb") as handle:
        fastavro.writer(
            handle, fastavro.parse_schema(AVRO_SCHEMA), [_avro(good[2]), _avro(avro_bad)]
        )
    parquet = folder / "part-2.parquet"
    pq.write_table(
        pa.Table.from_pylist(
            [_parquet_row("pq-good@x.com", True), _parquet_row("pq-bad@x.com", False)],
            schema=PARQUET_SCHEMA,
        ),
        parquet,
    )
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(CONFIG))
    out, dead = tmp_path / "out" / "events", tmp_path / "out" / "dead"

    argv = [
        "--config",
        str(config),
        "--input",
        str(folder / "part-*"),
        "--kinesis_stream",
        stream,
        "--kinesis_endpoint_url",
        kinesalite.endpoint_url,
        "--output_path",
        str(out),
        "--dead_letter_path",
        str(dead),
    ]

    code = main(argv)
    # Records that do not name their profile make the snapshot incomplete: by default the
    # run refuses before anything is sent.
    captured = capsys.readouterr()
    assert code == 1
    assert "--max_bad_records" in captured.err and "nothing was sent" in captured.err
    assert read_all_records(client, stream) == []
    assert not glob.glob(str(out) + "*")
    # The broken lines, the non-objects and the records without a profile key.
    unreadable = int(re.search(r"(\d+) input record", captured.err).group(1))
    assert unreadable == 8

    code = main([*argv, "--max_bad_records", str(unreadable)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    letters = validate_dead_letters(read_lines(str(dead)))
    assert len(letters) == len(MALFORMED) + 2
    by_file = {}
    for letter in letters:
        assert letter["stage"] == "read" and letter["reason"] and letter["raw"], letter
        by_file.setdefault(letter["file"], []).append(letter)
    assert sorted(by_file) == sorted([str(jsonl), str(avro), str(parquet)])
    raw_to_letter = {d["raw"]: d for d in by_file[str(jsonl)]}
    for raw, reason, fragment in MALFORMED:
        text = raw.decode("utf-8", "replace")
        assert text in raw_to_letter, text
        assert raw_to_letter[text]["reason"] == reason, (text, raw_to_letter[text])
        assert fragment in raw_to_letter[text]["error"], (text, raw_to_letter[text])
    [avro_letter] = by_file[str(avro)]
    assert avro_letter["reason"] == "invalid_record"
    assert "unknown status 'gone'" in avro_letter["error"]
    assert "avro-bad@x.com" in avro_letter["raw"]
    [parquet_letter] = by_file[str(parquet)]
    assert parquet_letter["reason"] == "no_profile_key"
    assert "no profile key" in parquet_letter["error"]
    # Counted in the summary.
    counts = summary(captured.out)
    assert counts["dead letters (input)"] == len(MALFORMED) + 2
    assert counts["records read"] == len(lines) + 2 + 2
    # The good records of the same files produced their events, on the stream and in files.
    good_keys = {f"email:good{i}@x.com" for i in range(3)} | {"email:pq-good@x.com"}
    records = read_all_records(client, stream)
    assert sorted(r["partition_key"] for r in records) == sorted(sha256(k) for k in good_keys)
    assert sorted(r["data"] for r in records) == sorted(read_lines(str(out)))
    # Dead letters hold raw input (PII): owner-readable only; so are the event files.
    written = glob.glob(str(tmp_path / "out" / "*"))
    assert written
    for path in written:
        assert os.stat(path).st_mode & 0o077 == 0, oct(os.stat(path).st_mode)


PARQUET_SCHEMA = pa.schema(
    [
        (
            "identityMap",
            pa.map_(
                pa.string(), pa.list_(pa.struct([("id", pa.string()), ("primary", pa.bool_())]))
            ),
        ),
        (
            "segmentMembership",
            pa.map_(pa.string(), pa.map_(pa.string(), pa.struct([("status", pa.string())]))),
        ),
    ]
)


def _parquet_row(email: str, primary: bool) -> dict:
    """A Parquet row (MAP columns as lists of pairs); not primary means no profile key."""
    return {
        "identityMap": [("email", [{"id": email, "primary": primary}])],
        "segmentMembership": [("ups", [(SEG, {"status": "realized"})])],
    }


def _avro(record: dict) -> dict:
    """A JSON-shaped profile with the optional fields the sample Avro schema has."""
    record = json.loads(json.dumps(record))
    for entry in record["identityMap"]["email"]:
        entry.setdefault("authenticatedState", None)
    return record


def _truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _corrupt_avro(folder):
    write_snapshots(str(folder), profiles=120, snapshots=2, fmt="avro")
    bad = folder / "snapshot=2024-01-02" / "part-0001.avro"
    _truncate(bad)
    return bad, "avro", str(folder / "snapshot=*" / "part-*.avro")


def _corrupt_parquet(folder):
    for day in ("2024-01-01", "2024-01-02"):
        target = folder / f"snapshot={day}"
        target.mkdir(parents=True)
        for part in range(2):
            rows = [_parquet_row(f"p{part}-{i}@x.com", True) for i in range(60)]
            table = pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA)
            pq.write_table(table, target / f"part-{part}.parquet")
    bad = folder / "snapshot=2024-01-02" / "part-1.parquet"
    _truncate(bad, 0.7)
    return bad, "parquet", str(folder / "snapshot=*" / "part-*.parquet")


def _corrupt_gzip(folder):
    for day in ("2024-01-01", "2024-01-02"):
        target = folder / f"snapshot={day}"
        target.mkdir(parents=True)
        for part in range(2):
            text = "".join(json.dumps(profile(f"g{part}-{i}@x.com")) + "\n" for i in range(80))
            (target / f"part-{part}.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    bad = folder / "snapshot=2024-01-02" / "part-1.jsonl.gz"
    _truncate(bad, 0.6)
    return bad, "gzip", str(folder / "snapshot=*" / "part-*.jsonl.gz")


@pytest.mark.parametrize("make", [_corrupt_avro, _corrupt_parquet, _corrupt_gzip])
def test_corrupt_or_truncated_file_fails_naming_it_and_sends_nothing(
    tmp_path, kinesis_stream, fault_proxy, make
):
    client, stream = kinesis_stream
    bad, kind, pattern = make(tmp_path / "in")
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(CONFIG))
    out = tmp_path / "out" / "events"
    result = run_cli(
        "--config",
        str(config),
        "--input",
        pattern,
        "--kinesis_stream",
        stream,
        "--kinesis_endpoint_url",
        fault_proxy.endpoint_url,
        "--output_path",
        str(out),
    )
    assert result.returncode == 1, result.stderr
    assert_one_error_line(result.stderr, f"{bad}: corrupt or truncated {kind} file")
    # Nothing half-sent: not one PutRecords request, nothing on the stream, no event file.
    assert fault_proxy.snapshot().put_records_requests == 0
    assert read_all_records(client, stream) == []
    assert not glob.glob(str(out) + "*.jsonl")


def test_usage_and_file_errors_are_one_line_without_traceback(tmp_path, aws_local_env):
    folder = tmp_path / "snapshot=2024-01-01"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text(json.dumps(profile("a@x.com")) + "\n")
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(CONFIG))
    out = str(tmp_path / "out" / "events")

    missing = run_cli("--config", str(config), "--input", str(tmp_path / "nope-*.jsonl"))
    assert missing.returncode == 2
    assert_one_error_line(missing.stderr, "no output")
    missing = run_cli(
        "--config", str(config), "--input", str(tmp_path / "nope-*.jsonl"), "--output_path", out
    )
    assert missing.returncode == 2
    assert_one_error_line(missing.stderr, str(tmp_path / "nope-*.jsonl"), "no file matches")

    bad_config = tmp_path / "bad.json"
    bad_config.write_text(json.dumps({"segments": [{"id": SEG}], "max_exit_fraction": 2}))
    result = run_cli(
        "--config", str(bad_config), "--input", str(folder / "*"), "--output_path", out
    )
    assert result.returncode == 2
    assert_one_error_line(result.stderr, str(bad_config), "max_exit_fraction")


def test_file_gone_between_matching_and_reading_is_named(tmp_path):
    # Root reads any file whatever its mode, and globs skip directories and broken links;
    # what every user can hit is a file that disappears after the run started.
    from transforms.snapshots.read import InputFileError, _ReadFileFn

    gone = tmp_path / "snapshot=2024-01-01" / "part-0.jsonl"
    with pytest.raises(InputFileError, match=rf"^{re.escape(str(gone))}: cannot open the file"):
        list(_ReadFileFn("json").process(str(gone)))


def test_unreadable_file_fails_naming_it(tmp_path, aws_local_env, monkeypatch, capsys):
    folder = tmp_path / "snapshot=2024-01-01"
    folder.mkdir()
    secret = folder / "part-0.jsonl"
    secret.write_text(json.dumps(profile("a@x.com")) + "\n")
    secret.chmod(0)
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(CONFIG))
    args = ("--config", str(config), "--input", str(secret), "--output_path", str(tmp_path / "o"))
    if os.geteuid() != 0:
        result = run_cli(*args)
        assert result.returncode == 1
        assert_one_error_line(result.stderr, f"{secret}: cannot open the file", "Permission denied")
        return
    # Root reads a file whatever its mode: make the filesystem refuse it the way it
    # refuses any other user, and run the command line in this process.
    from apache_beam.io.filesystems import FileSystems

    import pipeline.main as cli

    real_open = FileSystems.open

    def refusing_open(path, *a, **kw):
        if path == str(secret):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(FileSystems, "open", staticmethod(refusing_open))
    assert cli.main(list(args)) == 1
    assert_one_error_line(
        capsys.readouterr().err, f"{secret}: cannot open the file", "Permission denied"
    )


def _mass_exit_inputs(root, tracked: int, remaining: int) -> str:
    for day, count in (("2024-01-01", tracked), ("2024-01-02", remaining)):
        folder = root / f"snapshot={day}"
        folder.mkdir(parents=True)
        with open(folder / "part-0.jsonl", "w", encoding="utf-8") as handle:
            for i in range(count):
                handle.write(json.dumps(profile(f"p{i}@x.com")) + "\n")
    return str(root / "snapshot=*" / "*.jsonl")


@pytest.mark.parametrize("allow", [False, True])
def test_mass_exit_guard_end_to_end(tmp_path, kinesis_stream, fault_proxy, capsys, allow):
    client, stream = kinesis_stream
    # 120 profiles tracked, 50 left: 70 / 120 = 0.583 > 0.5 absent.
    pattern = _mass_exit_inputs(tmp_path / "in", 120, 50)
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(CONFIG))
    out, dead = tmp_path / "out" / "events", tmp_path / "out" / "dead"
    args = [
        "--config",
        str(config),
        "--input",
        pattern,
        "--kinesis_stream",
        stream,
        "--kinesis_endpoint_url",
        fault_proxy.endpoint_url,
        "--output_path",
        str(out),
        "--dead_letter_path",
        str(dead),
    ]
    code = main(args + (["--allow_mass_exit"] if allow else []))
    captured = capsys.readouterr()
    records = read_all_records(client, stream)
    if not allow:
        assert code == 1
        assert_one_error_line(captured.err, "snapshot 2024-01-02T00:00:00Z", "0.583")
        assert fault_proxy.snapshot().put_records_requests == 0
        assert records == []
        assert not glob.glob(str(out) + "*.jsonl")
        return
    assert code == 0, captured.err
    statuses = [json.loads(r["data"])["segmentMembership"]["ups"][SEG]["status"] for r in records]
    assert sorted(statuses) == ["exited"] * 70 + ["realized"] * 120
    exited_keys = {
        r["partition_key"]
        for r in records
        if json.loads(r["data"])["segmentMembership"]["ups"][SEG]["status"] == "exited"
    }
    assert exited_keys == {sha256(f"email:p{i}@x.com") for i in range(50, 120)}
    assert sorted(r["data"] for r in records) == sorted(read_lines(str(out)))
