"""Secrets and PII (docs/contract.md §3, §5, §6): what must never leave the job, checked end to end.

Both tests run ``python -m pipeline`` with ``LOG_LEVEL=DEBUG`` (the most talkative
setting) against kinesalite behind the fault proxy, capture everything the process
prints, read the stream back and read every file the job wrote.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys

import pytest

from tools.kinesalite import read_all_records

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG = "seg-a"
THROTTLE = "ProvisionedThroughputExceededException"
# Distinctive fake credentials: any appearance of them outside the signature is a leak.
ACCESS_KEY_ID = "AKIALEAKCHECK0000042"
SECRET_KEY = "LeakCheckSecret/Key+0123456789abcdefXYZ"
SESSION_TOKEN = "LeakCheckSessionToken0123456789TOKEN"

# Runs the job's real entry point with run_job wrapped, to record the options it ran with.
_SPY = """
import json, os, runpy, sys
import pipeline.main as job
real_run_job = job.run_job
def spy(settings, config, options):
    with open(os.environ["OPTIONS_DUMP"], "w") as handle:
        json.dump({"options": options.get_all_options(retain_unknown_options=True),
                   "settings": repr(settings)}, handle, default=str)
    return real_run_job(settings, config, options)
job.run_job = spy
sys.argv = ["pipeline", *sys.argv[1:]]
runpy.run_module("pipeline", run_name="__main__")
"""


def run_job(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", _SPY, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )


def written_files(root) -> dict[str, str]:
    """Every file under ``root`` (the job's outputs), path -> text."""
    files = {}
    for path in glob.glob(str(root / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, encoding="utf-8", errors="replace") as handle:
                files[path] = handle.read()
    return files


def test_credentials_never_appear_in_logs_options_or_outputs(
    tmp_path, kinesis_stream, fault_proxy, monkeypatch
):
    client, stream = kinesis_stream
    folder = tmp_path / "in" / "snapshot=2024-01-01"
    folder.mkdir(parents=True)
    records = [
        {
            "identityMap": {"ecid": [{"id": f"ecid-{i}", "primary": True}]},
            "segmentMembership": {"ups": {SEG: {"status": "realized"}}},
        }
        for i in range(40)
    ]
    lines = [json.dumps(r) for r in records] + ["{broken"]  # one dead letter
    (folder / "part-0.jsonl").write_text("\n".join(lines) + "\n")
    config = tmp_path / "activation.json"
    config.write_text(json.dumps({"segments": [{"id": SEG}]}))
    # One partial throttle, so the sink's retry path (and its DEBUG log) runs too.
    fault_proxy.fail_entries(THROTTLE, every=3, requests=1)
    out = tmp_path / "out"
    env = dict(
        os.environ,
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_SESSION_TOKEN=SESSION_TOKEN,
        LOG_LEVEL="DEBUG",
        OPTIONS_DUMP=str(tmp_path / "options.json"),
    )
    result = run_job(
        [
            "--config",
            str(config),
            "--input",
            str(folder / "*.jsonl"),
            "--kinesis_stream",
            stream,
            "--kinesis_endpoint_url",
            fault_proxy.endpoint_url,
            "--output_path",
            str(out / "events"),
            "--dead_letter_path",
            str(out / "dead"),
            # The input has one broken line (it must reach the dead letter, not a log).
            "--max_bad_records",
            "1",
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    # The credentials were used, through the default chain (the proxy saw the key id
    # in the signature), and DEBUG logging was on.
    assert fault_proxy.snapshot().access_keys[ACCESS_KEY_ID] > 0
    assert " DEBUG " in result.stderr
    assert "Retrying" in result.stderr
    options = (tmp_path / "options.json").read_text()
    outputs = written_files(out)
    assert any("dead" in path for path in outputs) and any("events" in path for path in outputs)
    stream_text = "".join(
        r["data"].decode() + r["partition_key"] for r in read_all_records(client, stream)
    )
    places = {"stdout": result.stdout, "stderr": result.stderr, "options": options}
    places.update(outputs)
    places["stream"] = stream_text
    for secret in (ACCESS_KEY_ID, SECRET_KEY, SESSION_TOKEN):
        leaks = [name for name, text in places.items() if secret in text]
        assert leaks == [], (secret, leaks)


# Identities of the PII test: e-mails with case and spaces, phones with punctuation.
PEOPLE = [
    (f" Pii.Person{i}@Example.COM ", f"+1 (555) 01{i:02d}-77{i:02d}", f"ecid-{i:04d}")
    for i in range(30)
]
PII_CONFIG = {
    "segments": [{"id": SEG, "name": "Audience"}],
    "profile_key": "primary",
    "identities": {
        "include": ["email_lc_sha256", "phone_sha256", "ecid"],
        "hash": {"email": "email_lc_sha256", "phone": "phone_sha256"},
    },
    "attributes": ["person.name.firstName"],
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_no_raw_email_or_phone_leaves_the_job_when_hashing_is_configured(
    tmp_path, kinesis_stream, fault_proxy
):
    client, stream = kinesis_stream
    records = {}
    for day in ("2024-01-01", "2024-01-02"):
        folder = tmp_path / "in" / f"snapshot={day}"
        folder.mkdir(parents=True)
        with open(folder / "part-0.jsonl", "w", encoding="utf-8") as handle:
            for i, (email, phone, ecid) in enumerate(PEOPLE):
                # Day 2: half the profiles leave the segment (exit events).
                status = "exited" if day == "2024-01-02" and i % 2 else "realized"
                record = {
                    "identityMap": {
                        "email": [{"id": email, "primary": True}],
                        "phone": [{"id": phone}],
                        "ecid": [{"id": ecid}],
                    },
                    "segmentMembership": {"ups": {SEG: {"status": status}}},
                    "person": {"name": {"firstName": f"First{i}"}},
                    "personalEmail": {"address": email.strip().lower()},
                }
                records[email] = record
                handle.write(json.dumps(record) + "\n")
    config = tmp_path / "activation.json"
    config.write_text(json.dumps(PII_CONFIG))
    out = tmp_path / "out"
    env = dict(os.environ, LOG_LEVEL="DEBUG", OPTIONS_DUMP=str(tmp_path / "options.json"))
    result = run_job(
        [
            "--config",
            str(config),
            "--input",
            str(tmp_path / "in" / "snapshot=*" / "*.jsonl"),
            "--kinesis_stream",
            stream,
            "--kinesis_endpoint_url",
            fault_proxy.endpoint_url,
            "--output_path",
            str(out / "events"),
        ],
        env,
    )
    assert result.returncode == 0, result.stderr
    stream_records = read_all_records(client, stream)
    events = [json.loads(r["data"]) for r in stream_records]
    assert len(events) == 30 + 15
    # Positive control: the hashed forms are there, so the data did flow.
    hashed_emails = {sha256(e.strip().lower()) for e, _, _ in PEOPLE}
    seen_hashes = {i["id"] for e in events for i in e["identityMap"]["email_lc_sha256"]}
    assert seen_hashes == hashed_emails
    assert {r["partition_key"] for r in stream_records} == {
        sha256(f"email:{e}") for e, _, _ in PEOPLE
    }
    stream_text = "\n".join(r["data"].decode() + " " + r["partition_key"] for r in stream_records)
    files = written_files(out)
    assert files
    logs = result.stdout + result.stderr
    assert " INFO " in result.stderr  # LOG_LEVEL took effect (the default is WARNING)
    for email, phone, ecid in PEOPLE:
        raw_forms = {
            email,
            email.strip(),
            email.strip().lower(),
            phone,
            "+1555" + phone[-9:].replace("-", ""),  # the digits that are hashed
        }
        for form in raw_forms:
            assert form not in stream_text, form
            for path, text in files.items():
                assert form not in text, (form, path)
            assert form not in logs, form
        # Identity values never appear in logs, even those the events carry.
        assert ecid not in logs, ecid
