"""Tests of the sink's client creation (transforms/kinesis/client.py)."""

from __future__ import annotations

import functools
import glob
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import apache_beam as beam
import pytest

from tools.kinesalite import read_all_records
from transforms.kinesis.client import kinesis_client_config, make_kinesis_client
from transforms.kinesis.sink import WriteToKinesisStream

ROLE_ARN = "arn:aws:iam::123456789012:role/segment-writer"
ROLE_KEY = "ASIAROLEKEYFORTESTS1"

_ASSUME_ROLE_XML = f"""<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <Credentials>
      <AccessKeyId>{ROLE_KEY}</AccessKeyId>
      <SecretAccessKey>role-secret</SecretAccessKey>
      <SessionToken>role-token</SessionToken>
      <Expiration>2099-01-01T00:00:00Z</Expiration>
    </Credentials>
    <AssumedRoleUser>
      <Arn>arn:aws:sts::123456789012:assumed-role/segment-writer/s</Arn>
      <AssumedRoleId>AROATESTROLE:s</AssumedRoleId>
    </AssumedRoleUser>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>1</RequestId></ResponseMetadata>
</AssumeRoleResponse>""".encode()


class FakeSts:
    """A minimal local STS answering AssumeRole; records the requests' parameters."""

    def __init__(self):
        self.calls: list[dict[str, str]] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers["Content-Length"])).decode()
                fake.calls.append(dict(urllib.parse.parse_qsl(body)))
                self.send_response(200)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(_ASSUME_ROLE_XML)))
                self.end_headers()
                self.wfile.write(_ASSUME_ROLE_XML)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_client_config_leaves_retries_to_the_sink():
    config = kinesis_client_config(
        "eu-west-1", max_pool_connections=10, connect_timeout=2, read_timeout=7
    )
    assert config.retries == {"total_max_attempts": 1, "mode": "standard"}
    assert (config.connect_timeout, config.read_timeout) == (2, 7)
    assert config.max_pool_connections == 10
    assert config.region_name == "eu-west-1"


def test_default_client_uses_the_default_credential_chain(aws_local_env):
    client = make_kinesis_client(region="eu-west-1")
    credentials = client._request_signer._credentials  # no public accessor
    assert credentials.access_key == "local-test-key"
    assert client.meta.region_name == "eu-west-1"


def test_transform_rejects_bad_settings_before_the_run():
    with pytest.raises(ValueError, match="stream name"):
        WriteToKinesisStream("")
    with pytest.raises(ValueError, match="max_in_flight_requests"):
        WriteToKinesisStream("s", max_in_flight_requests=0)
    with pytest.raises(ValueError, match="max_record_bytes"):
        WriteToKinesisStream("s", max_record_bytes=11 * 1024 * 1024)
    # Settings are keyword-only: a positional region cannot land in another setting.
    with pytest.raises(TypeError):
        WriteToKinesisStream("s", "eu-west-1")  # type: ignore[misc]


@pytest.mark.integration
def test_role_arn_assumes_the_role_and_signs_with_its_credentials(
    kinesis_stream, fault_proxy, monkeypatch
):
    client, stream = kinesis_stream
    with FakeSts() as sts:
        monkeypatch.setenv("AWS_ENDPOINT_URL_STS", sts.url)
        pipeline = beam.Pipeline()
        _ = (
            pipeline
            | beam.Create([("a" * 64, b'{"e":1}'), ("b" * 64, b'{"e":2}')])
            | WriteToKinesisStream(
                stream, region="us-east-1", endpoint_url=fault_proxy.endpoint_url, role_arn=ROLE_ARN
            )
        )
        pipeline.run().wait_until_finish()
    assert [c["Action"] for c in sts.calls] == ["AssumeRole"]
    assert sts.calls[0]["RoleArn"] == ROLE_ARN
    assert sts.calls[0]["RoleSessionName"] == "segment-events-kinesis-sink"
    # PutRecords was signed with the role's key, not with the environment's.
    assert set(fault_proxy.snapshot().access_keys) == {ROLE_KEY}
    assert sorted(r["data"] for r in read_all_records(client, stream)) == [b'{"e":1}', b'{"e":2}']


_FAKES: dict[str, object] = {}


class _RecordingClient:
    """A stand-in client, built by the injected factory inside the DoFn's setup()."""

    def __init__(self):
        self.records: list[tuple[str, bytes]] = []
        self.closed = False

    def put_records(self, StreamName, Records):  # noqa: N803 - boto3's parameter names
        self.records.extend((r["PartitionKey"], r["Data"]) for r in Records)
        return {"FailedRecordCount": 0, "Records": [{"SequenceNumber": "1"} for _ in Records]}

    def close(self):
        self.closed = True


def _factory(name: str) -> _RecordingClient:
    _FAKES[name] = _RecordingClient()
    return _FAKES[name]


def _describe(dead, window=beam.DoFn.WindowParam):
    return json.dumps({"reason": dead["reason"], "window": type(window).__name__})


def test_client_factory_is_used_and_dead_letters_are_in_the_global_window(tmp_path):
    out = str(tmp_path / "dead")
    pipeline = beam.Pipeline()
    dead = (
        pipeline
        | beam.Create([("k1", b"small"), ("k2", b"x" * 200), ("k3", b"also small")])
        | beam.WindowInto(beam.window.FixedWindows(60))
        | WriteToKinesisStream(
            "s", client_factory=functools.partial(_factory, "t1"), max_record_bytes=100
        )
    )
    _ = dead | beam.Map(_describe) | beam.io.WriteToText(out, num_shards=1)
    pipeline.run().wait_until_finish()
    with open(glob.glob(out + "*")[0], encoding="utf-8") as fh:
        described = [json.loads(line) for line in fh]
    assert described == [{"reason": "record_too_large", "window": "GlobalWindow"}]
    client = _FAKES["t1"]
    assert sorted(client.records) == [("k1", b"small"), ("k3", b"also small")]
    assert client.closed  # teardown closed the client
