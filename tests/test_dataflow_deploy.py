"""deploy/dataflow/: the Flex Template's parameters, the images' pins, the launch file, the doc.

The template's parameters must be the command line's own flags, derived here from the
options classes of pipeline/options.py (never a second list kept by hand); the images
must install what setup.py pins; the template's launch file must build the same job as
``python -m pipeline``, offline (the Dataflow runner's dry run); and every command of
docs/operations/dataflow.md must name files that exist and values the regexes accept.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import re
import runpy
import shlex
import subprocess
from pathlib import Path
from unittest import mock

import botocore.session
import pytest
import yaml
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

import pipeline.options as job_options

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "dataflow"
DOC = ROOT / "docs" / "operations" / "dataflow.md"
WORKER_IMAGE = "europe-west1-docker.pkg.dev/acme-data/segment-events/segment-events-worker:v1"
# The options classes of pipeline/options.py that are not the job's own flags on
# Dataflow, and why. A new class there fails test_every_options_class_is_classified.
NOT_TEMPLATE_PARAMETERS = {
    job_options.FlinkForwardedOptions: "read only by Flink's job server",
}


def metadata() -> dict:
    return json.loads((DEPLOY / "metadata.json").read_text(encoding="utf-8"))


def parameters() -> dict[str, dict]:
    return {p["name"]: p for p in metadata()["parameters"]}


def job_actions() -> list[argparse.Action]:
    """The flags of the job's options classes, and --streaming (Beam's StandardOptions)."""
    parser = argparse.ArgumentParser(add_help=False)
    for cls in template_classes():
        cls._add_argparse_args(parser)
    beam = argparse.ArgumentParser(add_help=False)
    StandardOptions._add_argparse_args(beam)
    streaming = [a for a in beam._actions if "--streaming" in a.option_strings]
    return [a for a in parser._actions if a.option_strings] + streaming


def template_classes() -> list[type]:
    return [
        cls
        for _, cls in inspect.getmembers(job_options, inspect.isclass)
        if issubclass(cls, PipelineOptions)
        and cls.__module__ == job_options.__name__
        and cls not in NOT_TEMPLATE_PARAMETERS
    ]


def setup_kwargs() -> dict:
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(ROOT / "setup.py"))
    return setup.call_args.kwargs


def pins() -> dict[str, str]:
    """Package name (lower case, no extras) -> pinned version, from setup.py."""
    kwargs = setup_kwargs()
    requirements = list(kwargs["install_requires"])
    for extra in kwargs["extras_require"].values():
        requirements += extra
    found = {}
    for requirement in requirements:
        name, _, version = requirement.partition("==")
        found[re.sub(r"\[.*\]", "", name).lower()] = version
    return found


def load_launch():
    spec = importlib.util.spec_from_file_location("dataflow_launch", DEPLOY / "launch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ metadata.json


def test_every_options_class_is_classified():
    classes = {
        cls
        for _, cls in inspect.getmembers(job_options, inspect.isclass)
        if issubclass(cls, PipelineOptions) and cls.__module__ == job_options.__name__
    }
    assert classes == set(template_classes()) | set(NOT_TEMPLATE_PARAMETERS)
    assert job_options.SegmentEventsOptions in template_classes()


def test_template_parameters_are_the_command_line_flags():
    flags = {a.option_strings[0].removeprefix("--") for a in job_actions()}
    assert len(flags) > 20
    names = [p["name"] for p in metadata()["parameters"]]
    assert len(names) == len(set(names)), "a parameter is listed twice"
    assert set(names) == flags


def test_every_parameter_is_described_and_only_config_and_input_are_required():
    for name, param in parameters().items():
        assert param["label"].strip() and len(param["helpText"]) > 20, name
        assert isinstance(param["isOptional"], bool) and param["regexes"], name
    required = {name for name, p in parameters().items() if not p["isOptional"]}
    assert required == {"config", "input"}


def test_regexes_compile_and_accept_the_command_line_defaults():
    params = parameters()
    checked = 0
    for action in job_actions():
        name = action.option_strings[0].removeprefix("--")
        [pattern] = params[name]["regexes"]
        regex = re.compile(pattern)
        if action.nargs == 0:  # a flag without a value: the template passes true/false
            assert regex.fullmatch("true") and regex.fullmatch("false"), name
            assert not regex.fullmatch("yes") and not regex.fullmatch(""), name
            checked += 1
        elif action.default is not None:
            assert regex.fullmatch(str(action.default)), (name, action.default)
            checked += 1
        for choice in action.choices or ():  # a flag with choices takes each of them
            assert regex.fullmatch(str(choice)), (name, choice)
    assert checked >= 8


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("input", "/local/snapshot=*/part-*.avro"),
        ("kinesis_region", "eu_west_1"),
        ("kinesis_stream_arn", "arn:aws:kinesis:eu-west-1:12:stream/x"),
        ("kinesis_role_arn", "arn:aws:iam::123456789012:user/x"),
        ("max_bad_records", "-1"),
        ("watch_interval", "5m"),
    ],
)
def test_regexes_refuse_what_the_job_cannot_take(name, bad):
    [pattern] = parameters()[name]["regexes"]
    assert not re.fullmatch(pattern, bad)


# ------------------------------------------------------------------------ images


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(instruction, arguments) of a Dockerfile, continuation lines joined."""
    text = (DEPLOY / name).read_text(encoding="utf-8")
    text = re.sub(r"\\\n", " ", text)
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_worker_image_is_beams_sdk_image_of_setup_pys_version():
    setup_pins = pins()
    [base] = [args for ins, args in dockerfile("worker.Dockerfile") if ins == "FROM"]
    assert base == f"apache/beam_python3.11_sdk:{setup_pins['apache-beam']}"
    assert setup_pins["apache-beam"] == "2.77.0"


def test_launcher_image_is_the_python_3_11_launcher():
    [base] = [args for ins, args in dockerfile("launcher.Dockerfile") if ins == "FROM"]
    assert base.startswith("gcr.io/dataflow-templates-base/python311-template-launcher-base")
    env = " ".join(args for ins, args in dockerfile("launcher.Dockerfile") if ins == "ENV")
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/launch.py" in env
    assert "COPY deploy/dataflow/launch.py /template/launch.py" in {
        f"{ins} {args}" for ins, args in dockerfile("launcher.Dockerfile")
    }


@pytest.mark.parametrize("name", ["worker.Dockerfile", "launcher.Dockerfile"])
def test_images_install_the_project_with_setup_pys_pins_only(name):
    setup_pins = pins()
    instructions = dockerfile(name)
    for ins, args in instructions:
        if ins == "COPY":
            *sources, _ = args.split()
            assert all((ROOT / s).exists() for s in sources), args
    runs = " ".join(args for ins, args in instructions if ins == "RUN")
    installs = re.findall(r"pip install ([^&;]+)", runs)
    assert installs, "no pip install"
    for install in installs:
        words = [w for w in shlex.split(install) if not w.startswith("-")]
        # Only the copied project (setup.py holds the pins), or a pin equal to setup.py's.
        for word in words:
            name_, _, version = word.partition("==")
            if version:
                assert setup_pins.get(re.sub(r"\[.*\]", "", name_).lower()) == version, word
            else:
                assert re.fullmatch(r"/(opt/segment-events|template)(\[gcp\])?", word), word
    all_text = (DEPLOY / name).read_text(encoding="utf-8")
    for package, version in re.findall(r"([A-Za-z0-9_.\-\[\]]+)==([0-9][^\s\"']*)", all_text):
        assert setup_pins.get(re.sub(r"\[.*\]", "", package).lower()) == version, package


def test_cloudbuild_builds_both_dockerfiles_and_pushes_both_images():
    build = yaml.safe_load((DEPLOY / "cloudbuild.yaml").read_text(encoding="utf-8"))
    files = [
        a.partition("=")[2] for s in build["steps"] for a in s["args"] if a.startswith("--file=")
    ]
    assert files == ["deploy/dataflow/worker.Dockerfile", "deploy/dataflow/launcher.Dockerfile"]
    tags = [
        a.partition("=")[2] for s in build["steps"] for a in s["args"] if a.startswith("--tag=")
    ]
    assert tags == build["images"]
    launcher_args = build["steps"][1]["args"]
    assert f"--build-arg=WORKER_IMAGE={tags[0]}" in launcher_args


def test_aws_profile_script_writes_what_boto3_reads(tmp_path):
    config = tmp_path / "etc" / "aws-config"
    role = "arn:aws:iam::123456789012:role/segment-events-writer"
    done = subprocess.run(
        ["sh", str(DEPLOY / "write-aws-config.sh"), role, "eu-west-1", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    session = botocore.session.Session()
    session.set_config_variable("config_file", str(config))
    profile = session.full_config["profiles"]["default"]
    assert profile == {
        "credential_process": f"segment-events aws-credentials --role-arn {role}",
        "region": "eu-west-1",
    }


@pytest.mark.parametrize(
    ("role", "region", "word"),
    [
        ("", "eu-west-1", "AWS_ROLE_ARN"),
        ("arn:aws:iam::123:role/x", "eu-west-1", "AWS_ROLE_ARN"),
        ("arn:aws:iam::123456789012:role/x; rm -rf /", "eu-west-1", "AWS_ROLE_ARN"),
        ("arn:aws:iam::123456789012:role/x", "", "AWS_REGION"),
    ],
)
def test_aws_profile_script_refuses_a_bad_role_or_region(tmp_path, role, region, word):
    config = tmp_path / "aws-config"
    done = subprocess.run(
        ["sh", str(DEPLOY / "write-aws-config.sh"), role, region, str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: ") and word in done.stderr
    assert len(done.stderr.splitlines()) == 1 and not config.exists()


# ------------------------------------------------------------------------ launch.py


def test_launch_turns_template_parameters_into_the_command_line():
    launch = load_launch()
    argv = launch.template_argv(
        [
            "--config=/c.json",
            "--kinesis_aggregate=true",
            "--quiet=false",
            "--streaming=TRUE",
            "--max_bad_records=0",
            "--project=p",
        ],
        {launch.WORKER_IMAGE_ENV: WORKER_IMAGE},
    )
    assert argv == [
        "--config=/c.json",
        "--kinesis_aggregate",
        "--streaming",
        "--max_bad_records=0",
        "--project=p",
        "--runner=DataflowRunner",
        f"--sdk_container_image={WORKER_IMAGE}",
        "--sdk_location=container",
    ]
    assert launch.boolean_flags() >= {"--streaming", "--quiet", "--overwrite"}
    with pytest.raises(launch.UsageError, match="--quiet takes true or false"):
        launch.template_argv(["--quiet=yes"], {})


@pytest.fixture
def snapshot_folder(tmp_path):
    folder = tmp_path / "snapshot=2024-01-31"
    folder.mkdir()
    (folder / "part-0.avro").write_bytes(b"")
    config = tmp_path / "activation.json"
    config.write_text(json.dumps({"segments": "*", "absent_profile_ttl": "2d"}))
    return folder, config


def launch_args(folder, config, *extra):
    return [
        f"--config={config}",
        f"--input={folder}/part-*.avro",
        "--kinesis_stream=audiences",
        "--kinesis_region=eu-west-1",
        "--skip_stream_check=true",
        "--kinesis_aggregate=true",
        "--quiet=false",
        "--project=my-project",
        "--region=europe-west1",
        "--temp_location=gs://my-bucket/tmp",
        "--staging_location=gs://my-bucket/staging",
        "--dry_run=true",  # Beam's TestOptions: stop before any Google Cloud call
        *extra,
    ]


@pytest.mark.parametrize(
    ("mode", "job_type"),
    [([], 1), (["--streaming=true", "--enable_streaming_engine"], 2)],
    ids=["batch", "streaming"],
)
def test_launch_builds_the_job_offline_on_the_worker_image(snapshot_folder, mode, job_type):
    pytest.importorskip(
        "apache_beam.runners.dataflow.internal.apiclient",
        reason="the gcp extra is not installed (pip install -e '.[gcp]')",
    )
    from apache_beam.portability.api import beam_runner_api_pb2

    from pipeline.options import SegmentEventsOptions

    launch = load_launch()
    folder, config = snapshot_folder
    if mode:  # streaming lists nothing when the job is built: the bucket is never called
        folder = "gs://landing-bucket/exports/snapshot=*"
    args = launch_args(folder, config, *mode)
    pipeline = launch.build(args, {launch.WORKER_IMAGE_ENV: WORKER_IMAGE})
    result = pipeline.run()

    assert type(pipeline.runner).__name__ == "DataflowRunner"
    assert result.job.proto.type_ == job_type
    assert result.job.options.view_as(SegmentEventsOptions).kinesis_aggregate is True
    [environment] = pipeline.runner.proto_pipeline.components.environments.values()
    image = beam_runner_api_pb2.DockerPayload.FromString(environment.payload).container_image
    assert image == WORKER_IMAGE
    staged = {
        beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(d.role_payload).staged_name
        for d in environment.dependencies
    }
    # The image holds the project and the SDK: neither is staged.
    assert "workflow.tar.gz" not in staged and not any("apache_beam" in s for s in staged)
    names = {t.unique_name for t in pipeline.runner.proto_pipeline.components.transforms.values()}
    assert any(n.startswith("ComputeTransitions") for n in names)
    assert any(n.startswith("WriteToKinesis/PutRecords") for n in names)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--snapshots_per_run=2"], "--snapshots_per_run runs several jobs: not from a template"),
        (["--report=gs://my-bucket/report", "--overwrite=true"], "--report is written when"),
        (["--overwrite=maybe"], "--overwrite takes true or false"),
    ],
)
def test_launch_refuses_what_a_template_cannot_do(
    snapshot_folder, capsys, monkeypatch, extra, message
):
    monkeypatch.setenv("LOG_LEVEL", "WARNING")  # launch.main sets the level of this process
    launch = load_launch()
    folder, config = snapshot_folder
    assert launch.main(launch_args(folder, config, *extra)) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {message}"), errors


# ----------------------------------------------------------------------------- doc


def doc_variables(text: str) -> dict[str, str]:
    """The doc's ``export NAME=value`` lines, values expanded in order."""
    variables: dict[str, str] = {}
    for name, value in re.findall(r"^export (\w+)=(\S+)", text, flags=re.M):
        value = value.strip('"')
        if "$(" in value:
            continue
        variables[name] = re.sub(r"\$(\w+)", lambda m: variables[m.group(1)], value)
    variables["SA_UNIQUE_ID"] = "108453212345678901234"
    return variables


def expand(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: variables.get(m.group(1), m.group(0)), text)


def test_doc_names_only_files_that_exist_and_none_to_be_written():
    text = DOC.read_text(encoding="utf-8")
    named = set(re.findall(r"deploy/dataflow/([\w.-]+)", text))
    assert named >= {"worker.Dockerfile", "launcher.Dockerfile", "metadata.json", "cloudbuild.yaml"}
    assert all((DEPLOY / name).exists() for name in named), named
    listed = set(re.findall(r"^\| `([\w.*-]+)` \|", text, flags=re.M))
    assert {p.name for p in DEPLOY.iterdir() if p.suffix != ".dockerignore"} <= listed
    assert "to be written" not in text.lower() and "todo" not in text.lower()


def test_doc_commands_use_the_template_and_its_parameters():
    text = DOC.read_text(encoding="utf-8")
    variables = doc_variables(text)
    assert "gcloud dataflow flex-template build" in text
    runs = re.findall(r"gcloud dataflow flex-template run .*?(?=\n```)", text, flags=re.S)
    assert len(runs) == 2
    params = parameters()
    seen = set()
    for run in runs:
        for group in re.findall(r'--parameters="([^"]+)"', run):
            for pair in expand(group, variables).split(","):
                name, _, value = pair.partition("=")
                assert name in params, name
                assert re.fullmatch(params[name]["regexes"][0], value), (name, value)
                seen.add(name)
    assert {"config", "input", "kinesis_stream", "streaming", "baseline"} <= seen


def test_doc_policies_are_valid_json_with_the_needed_actions():
    text = DOC.read_text(encoding="utf-8")
    variables = doc_variables(text)
    bodies = dict(re.findall(r"cat > ([\w.-]+) <<EOF\n(.*?)\nEOF", text, flags=re.S))
    trust = json.loads(expand(bodies["trust-policy.json"], variables))
    [statement] = trust["Statement"]
    assert statement["Principal"] == {"Federated": "accounts.google.com"}
    assert statement["Action"] == "sts:AssumeRoleWithWebIdentity"
    conditions = statement["Condition"]["StringEquals"]
    assert conditions["accounts.google.com:aud"] == conditions["accounts.google.com:sub"]
    assert conditions["accounts.google.com:sub"] == variables["SA_UNIQUE_ID"]
    write = json.loads(expand(bodies["kinesis-write.json"], variables))
    [statement] = write["Statement"]
    assert set(statement["Action"]) == {
        "kinesis:PutRecords",
        "kinesis:ListShards",
        "kinesis:DescribeStreamSummary",
    }
    assert statement["Resource"] == "arn:aws:kinesis:eu-west-1:123456789012:stream/audiences"
