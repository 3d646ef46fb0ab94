"""The command line: every flag of docs/contract.md §8, and one clear line for every usage error."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pipeline.main import main, parse_args

SPEC_FLAGS = (
    "--config",
    "--input",
    "--baseline",
    "--snapshot_time_field",
    "--kinesis_stream",
    "--kinesis_region",
    "--kinesis_endpoint_url",
    "--kinesis_role_arn",
    "--kinesis_max_records_per_second",
    "--kinesis_aggregate",
    "--output_path",
    "--dead_letter_path",
    "--allow_mass_exit",
    "--streaming",
    "--watch_interval",
    "--runner",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_help_shows_every_spec_flag_with_defaults():
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for flag in SPEC_FLAGS:
        assert flag in result.stdout, flag
    assert result.stdout.count("Default") >= 10


def test_usage_error_is_one_line_without_traceback(tmp_path):
    result = run_cli(
        "--config", str(tmp_path / "missing.json"), "--input", "x", "--output_path", "o"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: config file not found: {tmp_path / 'missing.json'}"]


@pytest.fixture
def snapshot(tmp_path):
    folder = tmp_path / "snapshot=2024-01-31"
    folder.mkdir()
    (folder / "part.jsonl").write_text("{}\n")
    config = tmp_path / "activation.json"
    config.write_text(json.dumps({"segments": "*"}))
    return str(folder / "part.jsonl"), str(config)


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "no output: give --kinesis_stream"),
        (
            ["--output_path", "o", "--kinesis_strem", "s"],
            "unknown flag --kinesis_strem; did you mean --kinesis_stream?",
        ),
        (["--output_path", "o", "--zzzz"], "unknown flag --zzzz (see --help)"),
        (["--output_path", "o", "--kinesis_max_records_per_second", "0"], "must be a positive"),
        (
            ["--output_path", "o", "--kinesis_max_record_bytes", "20000000"],
            "between 1 and 10485760",
        ),
        (
            ["--output_path", "o", "--kinesis_aggregate"],
            "--kinesis_aggregate needs --kinesis_stream",
        ),
        (["--output_path", "o", "--watch_interval", "5"], "only applies with --streaming"),
        (["--output_path", "o", "--max_watch_seconds", "5"], "only applies with --streaming"),
        (["--output_path", "o", "--streaming", "--watch_interval", "0"], "must be a positive"),
        (["--output_path", "o", "--streaming", "--max_watch_seconds", "0"], "must be a positive"),
        (
            ["--output_path", "o", "--streaming", "--snapshot_time_field", "ts"],
            "--snapshot_time_field cannot be used with --streaming",
        ),
        (["--output_path", "o", "--s3_secret_access_key", "x"], "credentials are never flags"),
        (
            ["--output_path", "o", "--direct_running_mode", "multi_threading"],
            "loses grouped records",
        ),
        (["--kinesis_stream", "s"], "--kinesis_region is required"),
        (["--output_path", "o", "--max_bad_records", "-1"], "must be 0 or more"),
        (
            ["--output_path", "o", "--streaming", "--max_bad_records", "3"],
            "--max_bad_records applies to batch runs",
        ),
    ],
)
def test_flag_errors(snapshot, capsys, monkeypatch, extra, message):
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    path, config = snapshot
    code = main(["--config", config, "--input", path, *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1


def test_required_flags(snapshot, capsys):
    path, config = snapshot
    assert main(["--input", path, "--output_path", "o"]) == 2
    assert "--config is required" in capsys.readouterr().err
    assert main(["--config", config, "--output_path", "o"]) == 2
    assert "--input is required" in capsys.readouterr().err


def test_input_errors_name_the_pattern_or_file(snapshot, tmp_path, capsys):
    _, config = snapshot
    assert (
        main(["--config", config, "--input", str(tmp_path / "none*.avro"), "--output_path", "o"])
        == 2
    )
    assert "no file matches" in capsys.readouterr().err
    undated = tmp_path / "part-1.jsonl"
    undated.write_text("{}\n")
    assert main(["--config", config, "--input", str(undated), "--output_path", "o"]) == 2
    assert f"{undated}: cannot resolve the snapshot time" in capsys.readouterr().err


def test_a_folder_as_input_names_the_glob_to_use(snapshot, tmp_path, capsys):
    path, config = snapshot
    folder = os.path.dirname(path)
    assert main(["--config", config, "--input", folder, "--output_path", "o"]) == 2
    err = capsys.readouterr().err
    assert f"--input {folder}: is a directory (use a glob such as {folder}/*.avro" in err


def test_existing_output_files_are_not_replaced_without_overwrite(snapshot, tmp_path, capsys):
    path, config = snapshot
    with open(path, "w") as handle:  # one valid profile, so that the run itself passes
        record = {"identityMap": {"ecid": [{"id": "1", "primary": True}]}}
        handle.write(json.dumps(record) + "\n")
    out = tmp_path / "out" / "events"
    out.parent.mkdir()
    yesterday = tmp_path / "out" / "events-00000-of-00001.jsonl"
    yesterday.write_text("yesterday\n")
    args = ["--config", config, "--input", path, "--output_path", str(out)]
    assert main(args) == 2
    assert f"--output_path {out}: 1 file(s) exist already" in capsys.readouterr().err
    assert yesterday.read_text() == "yesterday\n"
    assert main([*args, "--overwrite"]) == 0
    assert yesterday.read_text() != "yesterday\n"


@pytest.mark.parametrize(
    "config, message",
    [
        ("[]", "must be a JSON object"),
        ("{", "not valid JSON"),
        ('{"segments": []}', '"segments" is empty'),
        ('{"segments": "*", "colour": 1}', "unknown key 'colour'"),
        ('{"segments": "*", "event_id": "yes"}', '"event_id": expected true or false'),
    ],
)
def test_config_errors_fail_before_the_pipeline(snapshot, tmp_path, capsys, config, message):
    path, _ = snapshot
    bad = tmp_path / "bad.json"
    bad.write_text(config)
    assert main(["--config", str(bad), "--input", path, "--output_path", "o"]) == 2
    err = capsys.readouterr().err
    assert message in err and str(bad) in err


def test_streaming_watches_an_input_that_has_not_landed_yet(snapshot, tmp_path):
    _, config = snapshot
    landing = str(tmp_path / "landing" / "*" / "*.avro")
    settings, _, _ = parse_args(
        ["--config", config, "--input", landing, "--output_path", "o", "--streaming"]
    )
    assert (settings.streaming, settings.watch_interval, settings.max_watch_seconds) == (
        True,
        60.0,
        None,
    )
    settings, _, _ = parse_args(
        ["--config", config, "--input", landing, "--output_path", "o", "--streaming"]
        + ["--watch_interval", "5", "--max_watch_seconds", "30"]
    )
    assert (settings.watch_interval, settings.max_watch_seconds) == (5.0, 30.0)


def test_batch_has_no_watch_interval(snapshot):
    path, config = snapshot
    settings, _, _ = parse_args(["--config", config, "--input", path, "--output_path", "o"])
    assert (settings.streaming, settings.watch_interval) == (False, None)


def test_flink_flags_are_accepted_and_forwarded_to_the_job_server(snapshot):
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    path, config = snapshot
    _, _, options = parse_args(
        ["--config", config, "--input", path, "--output_path", "o", "--runner", "FlinkRunner"]
        + ["--flink_master", "flink-jobmanager:8081", "--flink_version", "1.19"]
        + ["--parallelism", "8", "--environment_type", "DOCKER"]
        + ["--checkpointing_interval", "60000", "--checkpointing_mode", "AT_LEAST_ONCE"]
    )
    # What the portable runner sends to the Flink job server (numbers travel as text).
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    assert {
        name: str(encoded[f"beam:option:{name}:v1"])
        for name in ("checkpointing_interval", "checkpointing_mode", "flink_master", "parallelism")
    } == {
        "checkpointing_interval": "60000",
        "checkpointing_mode": "AT_LEAST_ONCE",
        "flink_master": "flink-jobmanager:8081",
        "parallelism": "8",
    }


@pytest.mark.parametrize(
    "extra, expected",
    [
        # Checkpointed streaming: bundles finish before the barrier (a bundle finished
        # inside a checkpoint buffered the watch's first element forever on Flink).
        (["--streaming", "--checkpointing_interval", "1000"], "true"),
        (["--streaming", "--checkpointing_interval", "1000", "--max_bundle_size", "10"], "true"),
        (
            ["--streaming", "--checkpointing_interval", "1000"]
            + ["--no_finish_bundle_before_checkpointing"],
            "false",
        ),
        (["--streaming"], None),  # no checkpoints: Beam's default
        (["--checkpointing_interval", "1000"], None),  # batch
    ],
)
def test_checkpointed_streaming_finishes_bundles_before_checkpoints(snapshot, extra, expected):
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    path, config = snapshot
    _, _, options = parse_args(
        ["--config", config, "--input", path, "--output_path", "o", "--runner", "FlinkRunner"]
        + extra
    )
    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    value = dict(encoded.items()).get("beam:option:finish_bundle_before_checkpointing:v1")
    assert (None if value is None else str(value).lower()) == expected


@pytest.mark.parametrize(
    "flag, value, option",
    [
        ("--flink_master", "localhost:8081", "flink_master"),
        ("--parallelism", "2", "parallelism"),
        ("--checkpointing_interval", "10000", "checkpointing_interval"),
        ("--environment_type", "EXTERNAL", "environment_type"),
        ("--environment_config", "localhost:50000", "environment_config"),
        ("--job_endpoint", "localhost:8099", "job_endpoint"),
        ("--prism_location", "/opt/prism", "prism_location"),
    ],
)
def test_runner_flags_pass_the_unknown_flag_check(snapshot, flag, value, option):
    path, config = snapshot
    _, _, options = parse_args(
        ["--config", config, "--input", path, "--output_path", "o", f"{flag}={value}"]
    )
    assert str(options.get_all_options()[option]) == value


def test_an_invalid_beam_flag_value_is_one_usage_line(snapshot, capsys):
    path, config = snapshot
    code = main(
        ["--config", config, "--input", path, "--output_path", "o"] + ["--flink_version", "1.16"]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == [
        "error: argument --flink_version: invalid choice: '1.16' "
        "(choose from '1.19', '1.20', '2.0', '2.1', '2.2')"
    ]


def test_relative_paths_become_absolute_before_the_graph_is_built(snapshot, tmp_path, monkeypatch):
    _, config = snapshot
    monkeypatch.chdir(tmp_path)
    (tmp_path / "base").mkdir()
    _dated(tmp_path / "base", "2024-01-30")
    settings, _, _ = parse_args(
        [
            "--config",
            config,
            "--input",
            "snapshot=*/part.jsonl",
            "--baseline",
            "./base/snapshot=2024-01-30/part.jsonl",
            "--output_path",
            "out/events",
            "--dead_letter_path",
            "out/dead",
        ]
    )
    assert settings.inputs == (str(tmp_path / "snapshot=*" / "part.jsonl"),)
    assert settings.baseline == (str(tmp_path / "base" / "snapshot=2024-01-30" / "part.jsonl"),)
    assert settings.output_path == str(tmp_path / "out" / "events")
    assert settings.dead_letter_path == str(tmp_path / "out" / "dead")


def test_urls_are_left_as_they_are():
    from pipeline.arguments import absolute_path

    assert (
        absolute_path("s3://bucket/snapshot=*/part-*.avro") == "s3://bucket/snapshot=*/part-*.avro"
    )
    assert absolute_path("gs://b/x") == "gs://b/x"
    assert absolute_path(None) is None


@pytest.mark.parametrize("prefix", ["", "./"])
def test_a_relative_glob_starting_with_a_wildcard_folder_reads_its_files(
    tmp_path, monkeypatch, capsys, prefix
):
    from tools.sample_data import write_snapshots
    from tools.stream_check import read_lines

    write_snapshots(str(tmp_path), profiles=20, snapshots=2, fmt="avro")
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "--config",
            "activation.json",
            "--input",
            f"{prefix}snapshot=*/part-*.avro",
            "--output_path",
            "out/events",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert len(read_lines(str(tmp_path / "out" / "events"))) > 20


def _dated(tmp_path, day):
    folder = tmp_path / f"snapshot={day}"
    folder.mkdir()
    (folder / "part.jsonl").write_text("{}\n")
    return str(folder / "part.jsonl")


@pytest.mark.parametrize("baseline_day", ["2024-02-01", "2024-02-02"])
def test_a_baseline_not_older_than_the_input_is_refused(tmp_path, capsys, baseline_day):
    config = tmp_path / "activation.json"
    config.write_text(json.dumps({"segments": "*"}))
    inputs = [_dated(tmp_path, "2024-02-01"), _dated(tmp_path, "2024-02-03")]
    baseline = str(tmp_path / f"snapshot={baseline_day}" / "part.jsonl")
    if not os.path.exists(baseline):
        _dated(tmp_path, baseline_day)
    argv = ["--config", str(config), "--output_path", str(tmp_path / "o"), "--baseline", baseline]
    for path in inputs:
        argv += ["--input", path]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "were --input and --baseline swapped?" in err[0]
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("o*"))


def test_one_snapshot_without_a_baseline_warns_naming_baseline(tmp_path, caplog):
    config = tmp_path / "activation.json"
    config.write_text(json.dumps({"segments": "*"}))
    path = _dated(tmp_path, "2024-02-01")
    with caplog.at_level("WARNING", logger="pipeline.arguments"):
        parse_args(["--config", str(config), "--input", path, "--output_path", "o"])
    assert any("--baseline" in r.getMessage() for r in caplog.records)
    caplog.clear()
    older = _dated(tmp_path, "2024-01-31")
    with caplog.at_level("WARNING", logger="pipeline.arguments"):
        parse_args(
            ["--config", str(config), "--input", path, "--baseline", older, "--output_path", "o"]
        )
    assert not any("--baseline" in r.getMessage() for r in caplog.records)


def test_an_unexpected_failure_keeps_its_traceback_in_an_owner_only_file(
    snapshot, tmp_path, capsys, monkeypatch
):
    import pipeline.main as cli

    def broken(*_args, **_kwargs):
        raise RuntimeError("boom in the middle of a run")

    monkeypatch.setattr(cli, "run_job", broken)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(cli.tempfile, "tempdir", None)
    path, config = snapshot
    assert main(["--config", config, "--input", path, "--output_path", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: the pipeline failed: boom in the middle of a run"
    report = err[1].split(" is in ", 1)[1]
    assert report.startswith(str(tmp_path))
    text = open(report, encoding="utf-8").read()
    assert "Traceback" in text and "def broken" not in text and "RuntimeError: boom" in text
    assert os.stat(report).st_mode & 0o077 == 0


@pytest.mark.parametrize(
    "error",
    [
        "transforms.config.ConfigError",
        "transforms.snapshots.read.InputError",
        "transforms.snapshots.snapshot_time.SnapshotTimeError",
        "pipeline.arguments.UsageError",
        "transforms.errors.SegmentEventsError",
    ],
)
def test_an_error_of_the_family_is_one_line_exit_2_before_running_and_1_during_a_run(
    snapshot, tmp_path, capsys, monkeypatch, error
):
    import importlib

    import pipeline.main as cli

    module, name = error.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    path, config = snapshot
    argv = ["--config", config, "--input", path, "--output_path", str(tmp_path / "o")]

    def refuse(*_args, **_kwargs):
        raise cls("what to fix")

    with monkeypatch.context() as patch:
        patch.setattr(cli, "parse_args", refuse)
        assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == ["error: what to fix"]

    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(cli.tempfile, "tempdir", None)
    monkeypatch.setattr(cli, "run_job", refuse)
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines()[0] == "error: the pipeline failed: what to fix"


def test_the_declared_python_version_is_the_one_the_code_needs():
    import datetime
    import logging
    import re

    text = open(os.path.join(ROOT, "setup.py"), encoding="utf-8").read()
    assert re.search(r'python_requires=">=3\.11"', text)
    # The 3.11 features the code uses: present here, and why 3.10 is not enough.
    assert hasattr(datetime, "UTC") and hasattr(logging, "getLevelNamesMapping")
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    assert 'target-version = "py311"' in pyproject


def test_a_figure_the_runner_cannot_report_is_never_printed_as_zero(capsys):
    from pipeline.summary import print_summary, summary_rows

    print_summary(summary_rows({"records_read": 7, "snapshot_files_landed": 6}, complete=False))
    rows = dict(line.strip().split("  ", 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert rows["records read"].strip() == "7"
    assert rows["dead letters (input)"].strip() == "0"
    assert rows["events"].strip().startswith("not reported by this runner")
    assert rows["records sent to Kinesis"].strip().startswith("not reported by this runner")
    print_summary(summary_rows({"records_read": 7}, complete=True))
    rows = dict(line.strip().split("  ", 1) for line in capsys.readouterr().out.splitlines()[1:])
    assert rows["events"].strip() == "0"
