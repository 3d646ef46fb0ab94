"""``segment-events aws-credentials`` against real local servers (pipeline/aws_credentials.py).

Each server is a process of its own on a free loopback port, stopped by its PID, its log
printed at teardown (pytest shows it when the test fails): moto's STS in server mode, the
metadata-server stand-in ``tools/gce_metadata.py`` and, for what moto's STS never answers
(a denial, a skewed ``Date``), the fault proxy ``tools/sts_faults.py`` in front of moto.
The command runs as the process boto3 would start, with a clean AWS environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest
from botocore.credentials import RefreshableCredentials

from pipeline import aws_credentials as cmd
from tools.kinesalite import create_stream, local_client, read_all_records
from tools.procs import free_port, log_tail, port_open, spawn, stop_pid, wait_until
from tools.sample_data import write_snapshots

ROOT = Path(__file__).resolve().parents[1]
ROLE_ARN = "arn:aws:iam::123456789012:role/segment-events"
PY = sys.executable


@dataclasses.dataclass
class Server:
    """A helper server process: its port, PID and log."""

    name: str
    port: int
    pid: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@contextlib.contextmanager
def started(name: str, cmd_of: Callable[[int], list[str]], folder: Path) -> Iterator[Server]:
    """Starts ``cmd_of(port)`` on a free port; stops it by PID and prints its log tail."""
    port = free_port()
    log_path = folder / f"{name}-{port}.log"
    proc = spawn(cmd_of(port), log_path, cwd=ROOT)
    try:
        wait_until(
            name, lambda: port_open(port), pid=proc.pid, log_path=log_path, timeout=60, quiet=True
        )
        yield Server(name, port, proc.pid, log_path)
    finally:
        stop_pid(proc.pid)
        # Captured output of a teardown is shown by pytest only when the test failed.
        print(f"--- {name} (pid {proc.pid}) log {log_path}:\n{log_tail(log_path)}")


@pytest.fixture(scope="module")
def moto_sts(tmp_path_factory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("moto")
    with started(
        "moto", lambda p: [PY, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(p)], folder
    ) as s:
        yield s


def metadata_stub(folder: Path, *flags: str):
    return started(
        "gce_metadata", lambda p: [PY, "-m", "tools.gce_metadata", "--port", str(p), *flags], folder
    )


def sts_proxy(folder: Path, upstream: Server, *flags: str):
    return started(
        "sts_faults",
        lambda p: [
            PY,
            "-m",
            "tools.sts_faults",
            "--port",
            str(p),
            "--upstream",
            upstream.url,
            *flags,
        ],
        folder,
    )


@pytest.fixture
def metadata(tmp_path) -> Iterator[Server]:
    with metadata_stub(tmp_path) as server:
        yield server


def issued_tokens(stub: Server) -> list[str]:
    with urllib.request.urlopen(f"{stub.url}/__stub__/issued", timeout=10) as answer:
        return json.loads(answer.read())


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment without any AWS setting or credentials, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "GCE_METADATA")) and k != "LOG_LEVEL"
    }
    empty = tmp_path / "empty-aws-file"
    empty.write_text("")
    env.update(
        AWS_CONFIG_FILE=str(empty),
        AWS_SHARED_CREDENTIALS_FILE=str(empty),
        AWS_EC2_METADATA_DISABLED="true",
    )
    env.update(extra)
    return env


def run_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "pipeline.aws_credentials", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess, code: int, *words: str) -> str:
    assert result.returncode == code, (result.returncode, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def jwt_claims(token: str) -> dict:
    return cmd.token_claims(token, "test")


# ------------------------------------------------------------------------- happy path


def test_prints_credential_process_json_with_keys_that_sts_knows(tmp_path, moto_sts, metadata):
    env = clean_env(tmp_path, GCE_METADATA_HOST=metadata.host, AWS_ENDPOINT_URL_STS=moto_sts.url)
    before = dt.datetime.now(dt.UTC)
    result = run_command(env, "--role-arn", ROLE_ARN, "--session-name", "worker-7")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing at the default level
    out = json.loads(result.stdout)
    assert set(out) == {"Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"}
    assert out["Version"] == 1
    assert out["AccessKeyId"].startswith("ASIA")  # temporary (session) keys
    expiration = dt.datetime.strptime(out["Expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=dt.UTC
    )
    assert before < expiration <= before + dt.timedelta(seconds=3600 + 60)  # the default 1 h
    # One token, for the default audience, asked with format=full.
    [token] = issued_tokens(metadata)
    claims = jwt_claims(token)
    assert claims["aud"] == "sts.amazonaws.com" and "google" in claims
    # The keys are the role's: STS says who signs with them.
    sts = boto3.client(
        "sts",
        endpoint_url=moto_sts.url,
        region_name="us-east-1",
        aws_access_key_id=out["AccessKeyId"],
        aws_secret_access_key=out["SecretAccessKey"],
        aws_session_token=out["SessionToken"],
    )
    arn = sts.get_caller_identity()["Arn"]
    assert arn == "arn:aws:sts::123456789012:assumed-role/segment-events/worker-7"


def test_audience_and_duration_flags(tmp_path, moto_sts, metadata):
    env = clean_env(tmp_path, GCE_METADATA_HOST=metadata.host, AWS_ENDPOINT_URL_STS=moto_sts.url)
    before = dt.datetime.now(dt.UTC)
    result = run_command(
        env, "--role-arn", ROLE_ARN, "--audience", "//iam.example/aud", "--duration-seconds", "900"
    )

    assert result.returncode == 0, result.stderr
    expiration = dt.datetime.fromisoformat(json.loads(result.stdout)["Expiration"])
    assert expiration <= before + dt.timedelta(seconds=900 + 60)
    assert [jwt_claims(t)["aud"] for t in issued_tokens(metadata)] == ["//iam.example/aud"]


def test_console_script_and_python_m_pipeline_dispatch_the_subcommand(tmp_path):
    script = Path(PY).parent / "segment-events"
    assert script.exists(), "the project is not installed (pip install -e .)"
    helped = subprocess.run(
        [str(script), "aws-credentials", "--help"], capture_output=True, text=True, timeout=120
    )
    assert helped.returncode == 0, helped.stderr
    assert "--role-arn" in helped.stdout and "--duration-seconds" in helped.stdout
    refused = subprocess.run(
        [PY, "-m", "pipeline", "aws-credentials", "--role-arn", "not-an-arn"],
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_one_error_line(refused, cmd.EXIT_USAGE, "--role-arn must look like")


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ([], ["--role-arn"]),
        (["--role-arn", "arn:aws:iam::12:role/x"], ["--role-arn must look like"]),
        (["--role-arn", ROLE_ARN, "--duration-seconds", "899"], ["between 900 and 43200"]),
        (["--role-arn", ROLE_ARN, "--session-name", "a b"], ["--session-name"]),
    ],
)
def test_usage_errors(tmp_path, args, words):
    assert_one_error_line(run_command(clean_env(tmp_path), *args), cmd.EXIT_USAGE, *words)


def test_no_metadata_server_connection_refused(tmp_path, moto_sts):
    host = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = clean_env(tmp_path, GCE_METADATA_HOST=host, AWS_ENDPOINT_URL_STS=moto_sts.url)
    assert_one_error_line(
        run_command(env, "--role-arn", ROLE_ARN),
        cmd.EXIT_NO_METADATA_SERVER,
        f"no metadata server at {host} (connection refused)",
        "GCE_METADATA_HOST",
    )


def test_no_metadata_server_unknown_host(tmp_path):
    env = clean_env(tmp_path, GCE_METADATA_HOST="metadata.invalid")  # RFC 2606: never resolves
    assert_one_error_line(
        run_command(env, "--role-arn", ROLE_ARN),
        cmd.EXIT_NO_METADATA_SERVER,
        "no metadata server at metadata.invalid (unknown host)",
    )


def test_a_server_that_is_not_a_metadata_server(tmp_path, moto_sts):
    # moto answers HTTP, but not with Metadata-Flavor: Google.
    env = clean_env(tmp_path, GCE_METADATA_HOST=moto_sts.host)
    assert_one_error_line(
        run_command(env, "--role-arn", ROLE_ARN),
        cmd.EXIT_NO_METADATA_SERVER,
        "Metadata-Flavor: Google",
    )


@pytest.mark.parametrize(
    ("status", "requests", "words"),
    [
        ("403", 1, ["refused the ID token: HTTP 403"]),
        ("404", 1, ["HTTP 404", "service account attached"]),
        ("500", cmd.METADATA_ATTEMPTS, ["HTTP 500"]),  # server errors are retried
    ],
)
def test_token_refused(tmp_path, moto_sts, status, requests, words):
    with metadata_stub(tmp_path, "--fail-status", status) as stub:
        env = clean_env(tmp_path, GCE_METADATA_HOST=stub.host, AWS_ENDPOINT_URL_STS=moto_sts.url)
        assert_one_error_line(
            run_command(env, "--role-arn", ROLE_ARN), cmd.EXIT_TOKEN_REFUSED, *words
        )
        assert stub.log().count(f'" {status} ') == requests


@pytest.mark.parametrize(
    "code", ["AccessDenied", "InvalidIdentityToken", "ExpiredTokenException", "IDPRejectedClaim"]
)
def test_sts_denied(tmp_path, moto_sts, metadata, code):
    message = f"the role's trust policy refuses this token ({code})"
    with sts_proxy(tmp_path, moto_sts, "--error", code, "--message", message) as proxy:
        env = clean_env(tmp_path, GCE_METADATA_HOST=metadata.host, AWS_ENDPOINT_URL_STS=proxy.url)
        line = assert_one_error_line(
            run_command(env, "--role-arn", ROLE_ARN),
            cmd.EXIT_STS_DENIED,
            f"STS at {proxy.url} denied AssumeRoleWithWebIdentity on {ROLE_ARN}: {code}: {message}",
        )
        assert proxy.log().count("AssumeRoleWithWebIdentity -> ") == 1  # a denial is not retried
    assert all(token not in line for token in issued_tokens(metadata))


def test_clock_skew_token_issued_in_the_future(tmp_path, moto_sts):
    # The metadata server's clock (Google's) is an hour ahead of this machine's.
    with metadata_stub(tmp_path, "--clock-offset", "3600") as stub:
        env = clean_env(tmp_path, GCE_METADATA_HOST=stub.host, AWS_ENDPOINT_URL_STS=moto_sts.url)
        assert_one_error_line(
            run_command(env, "--role-arn", ROLE_ARN),
            cmd.EXIT_CLOCK_SKEW,
            "clock skew: the ID token was issued",
            "this clock is behind",
        )


def test_clock_skew_fresh_token_already_expired(tmp_path, moto_sts):
    with metadata_stub(tmp_path, "--clock-offset", "-7200") as stub:
        env = clean_env(tmp_path, GCE_METADATA_HOST=stub.host, AWS_ENDPOINT_URL_STS=moto_sts.url)
        assert_one_error_line(
            run_command(env, "--role-arn", ROLE_ARN), cmd.EXIT_CLOCK_SKEW, "this clock is ahead"
        )


@pytest.mark.parametrize(("offset", "side"), [("3600", "behind"), ("-3600", "ahead of")])
def test_clock_skew_sts_date(tmp_path, moto_sts, metadata, offset, side):
    # moto grants the role; its answer's Date says this machine's clock is an hour off.
    with sts_proxy(tmp_path, moto_sts, "--date-offset", offset) as proxy:
        env = clean_env(tmp_path, GCE_METADATA_HOST=metadata.host, AWS_ENDPOINT_URL_STS=proxy.url)
        result = run_command(env, "--role-arn", ROLE_ARN)
        assert_one_error_line(result, cmd.EXIT_CLOCK_SKEW, f"s {side} STS's", "fix the time sync")
        assert "(forwarded" in proxy.log()


def test_clock_skew_sts_says_token_not_valid_yet(tmp_path, moto_sts, metadata):
    flags = ("--error", "IDPRejectedClaim", "--message", "Token used before issued")
    with sts_proxy(tmp_path, moto_sts, *flags) as proxy:
        env = clean_env(tmp_path, GCE_METADATA_HOST=metadata.host, AWS_ENDPOINT_URL_STS=proxy.url)
        assert_one_error_line(
            run_command(env, "--role-arn", ROLE_ARN),
            cmd.EXIT_CLOCK_SKEW,
            "not valid yet (IDPRejectedClaim: Token used before issued)",
        )


def test_sts_failed_unreachable_or_server_error(tmp_path, moto_sts, metadata):
    closed = f"http://127.0.0.1:{free_port()}"
    env = clean_env(tmp_path, GCE_METADATA_HOST=metadata.host, AWS_ENDPOINT_URL_STS=closed)
    assert_one_error_line(
        run_command(env, "--role-arn", ROLE_ARN),
        cmd.EXIT_STS_FAILED,
        f"STS at {closed} could not be called: EndpointConnectionError",
    )
    with sts_proxy(tmp_path, moto_sts, "--error", "InternalFailure", "--status", "500") as proxy:
        env["AWS_ENDPOINT_URL_STS"] = proxy.url
        assert_one_error_line(
            run_command(env, "--role-arn", ROLE_ARN), cmd.EXIT_STS_FAILED, "InternalFailure"
        )
        assert proxy.log().count("AssumeRoleWithWebIdentity -> 500") == 3  # retried


def test_token_and_keys_never_reach_stderr_or_a_log_even_at_debug(tmp_path, moto_sts, metadata):
    env = clean_env(
        tmp_path,
        GCE_METADATA_HOST=metadata.host,
        AWS_ENDPOINT_URL_STS=moto_sts.url,
        LOG_LEVEL="DEBUG",
    )
    granted = run_command(env, "--role-arn", ROLE_ARN)
    assert granted.returncode == 0, granted.stderr
    keys = json.loads(granted.stdout)
    with sts_proxy(tmp_path, moto_sts, "--error", "AccessDenied") as proxy:
        denied = run_command(dict(env, AWS_ENDPOINT_URL_STS=proxy.url), "--role-arn", ROLE_ARN)
        proxy_log = proxy.log()
    assert denied.returncode == cmd.EXIT_STS_DENIED
    tokens = issued_tokens(metadata)
    assert len(tokens) == 2
    logs = {"granted": granted.stderr, "denied": denied.stderr, "stub": metadata.log()}
    logs["proxy"] = proxy_log
    assert "ID token from" in granted.stderr  # DEBUG logging was on: the check means something
    secrets = [*tokens, keys["AccessKeyId"], keys["SecretAccessKey"], keys["SessionToken"]]
    # Each JWT part alone too (the signature, the claims).
    secrets += [part for token in tokens for part in token.split(".")]
    leaks = [(name, s[:12]) for name, text in logs.items() for s in secrets if s in text]
    assert leaks == []


# ----------------------------------------------------------------------------- refresh


def write_profile(tmp_path: Path, command: str, name: str = "gce") -> Path:
    config = tmp_path / "aws-config"
    section = "default" if name == "default" else f"profile {name}"
    config.write_text(f"[{section}]\ncredential_process = {command}\nregion = us-east-1\n")
    return config


@pytest.fixture
def only_the_profile(tmp_path, monkeypatch, moto_sts, metadata):
    """This process's environment: no AWS keys, the metadata stub, moto's STS."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("GCE_METADATA_HOST", metadata.host)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_sts.url)

    def session(duration: int) -> boto3.session.Session:
        command = (
            f"{PY} -m pipeline.aws_credentials --role-arn {ROLE_ARN} --duration-seconds {duration}"
        )
        monkeypatch.setenv("AWS_CONFIG_FILE", str(write_profile(tmp_path, command)))
        return boto3.session.Session(profile_name="gce")

    return session


def test_boto3_refreshes_the_keys_before_they_expire(only_the_profile, metadata):
    # botocore refreshes process credentials with less than 15 minutes left (advisory,
    # 10 minutes mandatory): keys of the shortest lifetime STS grants (900 s) are in that
    # window from the start, so every access runs the command again and gets new keys.
    creds = only_the_profile(900).get_credentials()
    assert isinstance(creds, RefreshableCredentials) and creds.method == "custom-process"
    assert len(issued_tokens(metadata)) == 1
    seen, expiries = [], []
    for access in range(1, 4):
        frozen = creds.get_frozen_credentials()
        seen.append(frozen.access_key)
        expiries.append(creds._expiry_time)
        assert len(issued_tokens(metadata)) == 1 + access  # the command ran once more
        assert creds.refresh_needed()  # still within the advisory window
    assert len(set(seen)) == 3 and all(key.startswith("ASIA") for key in seen)
    assert expiries == sorted(expiries)
    # Each refreshed set is the role's, as STS sees it when they sign a request.
    sts = only_the_profile(900).client("sts")
    assert ":assumed-role/segment-events/" in sts.get_caller_identity()["Arn"]


def test_boto3_keeps_keys_that_are_far_from_expiring(only_the_profile, metadata):
    # The control: with an hour left, accesses reuse the keys (no new command run).
    creds = only_the_profile(3600).get_credentials()
    first = creds.get_frozen_credentials().access_key
    assert not creds.refresh_needed()
    assert creds.get_frozen_credentials().access_key == first
    assert len(issued_tokens(metadata)) == 1


# -------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_job_writes_to_kinesis_with_only_the_credential_process_profile(
    tmp_path, moto_sts, metadata, fault_proxy, kinesalite
):
    # The proxy in front of kinesalite (which accepts any keys) records the key id of
    # every request, so the test sees which credentials the job signed with.
    write_snapshots(str(tmp_path / "in"), profiles=40, snapshots=2, fmt="jsonl")
    create_stream(local_client(kinesalite.endpoint_url), "via-web-identity", shards=2)
    # The worker image's profile, written by its own script: `segment-events aws-credentials`
    # (the console script, found on PATH) with the role's ARN, and the region.
    config = tmp_path / "aws-config"
    script = ROOT / "deploy" / "dataflow" / "write-aws-config.sh"
    subprocess.run(["sh", str(script), ROLE_ARN, "us-east-1", str(config)], check=True, timeout=30)
    env = clean_env(
        tmp_path,
        AWS_CONFIG_FILE=str(config),
        GCE_METADATA_HOST=metadata.host,
        AWS_ENDPOINT_URL_STS=moto_sts.url,
        LOG_LEVEL="INFO",
        PATH=f"{Path(PY).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    job = subprocess.run(
        [
            PY, "-m", "pipeline",
            "--config", str(tmp_path / "in" / "activation.json"),
            "--input", str(tmp_path / "in" / "snapshot=*" / "part-*.jsonl"),
            "--kinesis_stream", "via-web-identity",
            "--kinesis_endpoint_url", fault_proxy.endpoint_url,
            "--output_path", str(tmp_path / "out" / "events"),
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-4000:]

    sent = sorted(
        line
        for path in (tmp_path / "out").glob("events*")
        for line in path.read_text(encoding="utf-8").splitlines()
    )
    stream = read_all_records(local_client(kinesalite.endpoint_url), "via-web-identity")
    assert len(sent) > 10
    assert sorted(r["data"].decode("utf-8") for r in stream) == sent
    keys = fault_proxy.snapshot().access_keys
    assert keys and all(key.startswith("ASIA") for key in keys), keys  # moto's session keys
    tokens = issued_tokens(metadata)
    assert tokens  # the profile's command ran (the region came from the profile too)
    leaks = [s[:12] for s in [*tokens, *keys] if s in output]
    assert leaks == []
