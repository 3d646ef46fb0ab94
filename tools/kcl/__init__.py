"""Reads a Kinesis stream back exactly as a KCL 2.x consumer would: KCL's own deaggregation.

A KCL 2.x consumer deaggregates each record it reads with
``software.amazon.kinesis.retrieval.AggregatorUtil.deaggregate(records, startingHashKey,
endingHashKey)`` (amazon-kinesis-client): if any user record of a KPL aggregate hashes
(MD5 of its partition key, or its explicit hash key) outside the range of the shard the
aggregate was read from, KCL drops the WHOLE aggregate. ``aws_kinesis_agg``'s Python
deaggregator does not. This package runs the real KCL class in a JVM, for tests::

    from tools.kcl import read_stream_as_kcl

    per_shard = read_stream_as_kcl(client, "events")   # {shard_id: [UserRecord, ...]}

* :func:`fetch` copies KCL 2.6.0 and the three jars its deaggregation needs (``pom.xml``
  beside this file; no AWS SDK) into ``.cache/kcl/lib`` with Maven, and compiles
  ``KclDeaggregate.java`` into ``.cache/kcl/classes`` (once; ``python -m tools.kcl fetch``).
* :func:`deaggregate_shards` deaggregates records already read, all shards in one JVM.
* :func:`read_stream_as_kcl` reads every shard, parents before children, and deaggregates.

``$KCL_TOOLS_HOME`` moves the cache; Java 17 (``java``, ``javac``) and Maven come with the
machine.
"""

from __future__ import annotations

import base64
import dataclasses
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
SOURCE = HERE / "KclDeaggregate.java"
MAIN_CLASS = "KclDeaggregate"
CACHE = Path(os.environ.get("KCL_TOOLS_HOME", ROOT / ".cache" / "kcl"))
# A short-lived JVM: start fast, little heap work.
JVM_FLAGS = ("-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xshare:auto")
RUN_TIMEOUT = 300.0
_FIELDS_OUT = 7


class KclToolsError(RuntimeError):
    """The KCL classpath could not be fetched or built, or the deaggregation JVM failed."""


@dataclasses.dataclass(frozen=True)
class UserRecord:
    """One user record as KCL hands it to a record processor.

    Attributes:
        shard_id: The shard the Kinesis record was read from.
        sequence_number: The Kinesis record's sequence number (of the aggregate).
        sub_sequence_number: The user record's index in its aggregate (0 if not aggregated).
        partition_key: The user record's partition key.
        data: The user record's payload.
        aggregated: True if KCL took it out of a KPL aggregate.
        explicit_hash_key: The user record's explicit hash key in the aggregate, or None.
    """

    shard_id: str
    sequence_number: str
    sub_sequence_number: int
    partition_key: str
    data: bytes
    aggregated: bool = False
    explicit_hash_key: str | None = None


# ------------------------------------------------------------------------ the classpath


def lib_dir() -> Path:
    return CACHE / "lib"


def classes_dir() -> Path:
    return CACHE / "classes"


def _digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def classpath() -> str:
    """The ``-cp`` of ``KclDeaggregate`` (after :func:`fetch`)."""
    return f"{classes_dir()}{os.pathsep}{lib_dir()}/*"


def _tool(name: str, why: str) -> str:
    """``java``/``javac`` of ``$JAVA_HOME`` if set, else from PATH (``mvn``: PATH)."""
    home = os.environ.get("JAVA_HOME")
    if home and name != "mvn" and (Path(home) / "bin" / name).exists():
        return str(Path(home) / "bin" / name)
    found = shutil.which(name)
    if found is None:
        raise KclToolsError(f"{name} is needed {why}")
    return found


def _run_checked(cmd: list[str], what: str) -> None:
    result = subprocess.run(
        cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise KclToolsError(f"{what} failed (exit {result.returncode}):\n{tail}")


def _fetch_jars(quiet: bool) -> Path:
    lib = lib_dir()
    stamp = lib / f".complete-{_digest(POM)}"
    if stamp.exists():
        return lib
    mvn = _tool("mvn", "(Maven) to fetch the KCL jars")
    tmp = CACHE / "lib.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    if not quiet:
        print(
            f"==> fetching KCL's deaggregation jars into {lib} (about 10 seconds)",
            file=sys.stderr,
            flush=True,
        )
    _run_checked(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={tmp}",
        ],
        "mvn dependency:copy-dependencies (tools/kcl/pom.xml)",
    )
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    stamp.touch()
    return lib


def _compile(quiet: bool) -> Path:
    classes = classes_dir()
    stamp = classes / f".complete-{_digest(POM, SOURCE)}"
    if stamp.exists():
        return classes
    javac = _tool("javac", "(Java 17) to compile KclDeaggregate.java")
    tmp = CACHE / "classes.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if not quiet:
        print(f"==> compiling {SOURCE.name} into {classes}", file=sys.stderr, flush=True)
    _run_checked(
        [
            javac,
            "-encoding",
            "UTF-8",
            "-d",
            str(tmp),
            "-cp",
            f"{lib_dir()}/*",
            str(SOURCE),
        ],
        f"javac {SOURCE.name}",
    )
    shutil.rmtree(classes, ignore_errors=True)
    tmp.rename(classes)
    stamp.touch()
    return classes


def fetch(quiet: bool = False) -> Path:
    """Fetches the KCL jars and compiles ``KclDeaggregate`` into ``.cache/kcl`` (once).

    Idempotent: when both are there for the current ``pom.xml`` and Java source it only
    checks two stamp files and prints nothing. A file lock serialises concurrent callers.

    Returns:
        The cache folder (``lib/`` and ``classes/``).

    Raises:
        KclToolsError: Maven or javac is missing or failed.
    """
    if (lib_dir() / f".complete-{_digest(POM)}").exists() and (
        classes_dir() / f".complete-{_digest(POM, SOURCE)}"
    ).exists():
        return CACHE
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        _fetch_jars(quiet)
        _compile(quiet)
    return CACHE


# ------------------------------------------------------------------------ deaggregation


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _input_lines(shards: Iterable[dict[str, Any]]) -> Iterator[str]:
    for shard in shards:
        shard_id = str(shard["shard_id"])
        if not shard_id or any(c in shard_id for c in "\t\r\n"):
            raise ValueError(f"a shard id without tabs or newlines is needed: {shard_id!r}")
        head = f"{shard_id}\t{int(shard['starting_hash_key'])}\t{int(shard['ending_hash_key'])}"
        for record in shard["records"]:
            sequence_number = str(record["SequenceNumber"])
            if not sequence_number.isdigit():
                raise ValueError(f"not a sequence number: {sequence_number!r}")
            yield (
                f"{head}\t{sequence_number}\t{_b64(record['PartitionKey'].encode('utf-8'))}"
                f"\t{_b64(bytes(record['Data']))}\n"
            )


def _parse_output(stdout: bytes) -> list[UserRecord]:
    out = []
    for number, line in enumerate(stdout.decode("utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) != _FIELDS_OUT:
            raise KclToolsError(f"unexpected line {number} from {MAIN_CLASS}: {line[:200]!r}")
        shard_id, sequence_number, sub, pk, data, aggregated, ehk = fields
        out.append(
            UserRecord(
                shard_id=shard_id,
                sequence_number=sequence_number,
                sub_sequence_number=int(sub),
                partition_key=base64.b64decode(pk).decode("utf-8"),
                data=base64.b64decode(data),
                aggregated=aggregated == "1",
                explicit_hash_key=ehk or None,
            )
        )
    return out


def deaggregate_shards(shards: list[dict[str, Any]]) -> list[UserRecord]:
    """Deaggregates records read from Kinesis with KCL 2.x's ``AggregatorUtil``, in one JVM.

    Args:
        shards: One dict per shard: ``shard_id`` (str), ``starting_hash_key`` and
            ``ending_hash_key`` (int, the shard's ``HashKeyRange``), and ``records``: the
            shard's GetRecords records in read order, each with ``SequenceNumber`` (str),
            ``PartitionKey`` (str) and ``Data`` (bytes); other keys are ignored.

    Returns:
        Every user record KCL yields, shard after shard in the order given, and in read
        order within a shard: an aggregate becomes its user records (sub-sequence numbers
        0, 1, ...), or nothing when one of them hashes outside its shard's range; a record
        that is not an aggregate comes back as itself.

    Raises:
        KclToolsError: the JVM failed (the message ends with its stderr), or the classpath
            could not be built.
        ValueError: a shard id or sequence number that the line protocol cannot carry.
    """
    payload = "".join(_input_lines(shards)).encode("utf-8")
    if not payload:
        return []
    fetch(quiet=True)
    cmd = [_tool("java", "(Java 17) to run KCL"), *JVM_FLAGS, "-cp", classpath(), MAIN_CLASS]
    try:
        result = subprocess.run(
            cmd, input=payload, capture_output=True, timeout=RUN_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"").decode("utf-8", "replace").splitlines()[-30:]
        raise KclToolsError(
            f"{MAIN_CLASS} did not finish in {RUN_TIMEOUT:.0f}s; stderr:\n" + "\n".join(tail)
        ) from err
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").splitlines()[-30:]
        raise KclToolsError(
            f"{MAIN_CLASS} (KCL deaggregation) failed with exit {result.returncode}; "
            "stderr:\n" + "\n".join(tail)
        )
    return _parse_output(result.stdout)


# ------------------------------------------------------------------------ reading a stream


def parent_first(shards: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Orders ListShards shards so that each comes after its parent and adjacent parent.

    Parents missing from the list (expired) are ignored; otherwise shards keep shard-id
    order, as KCL's lease hierarchy reads a parent to its end before its children.
    """
    by_id = {shard["ShardId"]: shard for shard in shards}
    ordered: list[dict[str, Any]] = []
    state: dict[str, str] = {}

    def visit(shard_id: str) -> None:
        if state.get(shard_id) == "done":
            return
        if state.get(shard_id) == "visiting":
            raise ValueError(f"shard lineage has a cycle at {shard_id}")
        state[shard_id] = "visiting"
        shard = by_id[shard_id]
        for key in ("ParentShardId", "AdjacentParentShardId"):
            parent = shard.get(key)
            if parent in by_id:
                visit(parent)
        state[shard_id] = "done"
        ordered.append(shard)

    for shard_id in sorted(by_id):
        visit(shard_id)
    return ordered


def _read_shard(
    client: Any, stream_name: str, shard: dict[str, Any], max_empty_polls: int
) -> list[dict[str, Any]]:
    """A shard's records from TRIM_HORIZON to its end.

    A closed shard ends when GetRecords returns no NextShardIterator; an open one at the
    first empty GetRecords that is not behind (MillisBehindLatest 0).
    """
    shard_id = shard["ShardId"]
    closed = "EndingSequenceNumber" in shard.get("SequenceNumberRange", {})
    iterator = client.get_shard_iterator(
        StreamName=stream_name, ShardId=shard_id, ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records: list[dict[str, Any]] = []
    empty_polls = 0
    while iterator is not None:
        response = client.get_records(ShardIterator=iterator, Limit=10_000)
        records.extend(response["Records"])
        iterator = response.get("NextShardIterator")
        if response["Records"]:
            empty_polls = 0
            continue
        if not closed and response.get("MillisBehindLatest", 0) == 0:
            break
        empty_polls += 1
        if iterator is not None and empty_polls > max_empty_polls:
            raise KclToolsError(f"shard {shard_id} of {stream_name} never drained")
    return records


def read_stream_as_kcl(
    client: Any, stream_name: str, max_empty_polls: int = 1000
) -> dict[str, list[UserRecord]]:
    """Reads every shard of a stream and deaggregates it as a KCL 2.x consumer would.

    Shards are read parent first (see :func:`parent_first`), each from TRIM_HORIZON with
    GetRecords until it is closed and drained (no NextShardIterator) or, if open, until
    an empty poll that is not behind; then all are deaggregated in one JVM.

    Args:
        client: A boto3 Kinesis client.
        stream_name: The stream.
        max_empty_polls: Empty GetRecords in a row after which a shard that does not end
            is an error.

    Returns:
        ``{shard_id: [UserRecord, ...]}`` in parent-first order, every shard present
        (an empty list when nothing survives), user records in read order.

    Raises:
        KclToolsError: a shard never drained, or the deaggregation failed.
    """
    from tools.kinesalite import list_shards

    shards = parent_first(list_shards(client, stream_name))
    inputs = []
    for shard in shards:
        hash_range = shard["HashKeyRange"]
        inputs.append(
            {
                "shard_id": shard["ShardId"],
                "starting_hash_key": int(hash_range["StartingHashKey"]),
                "ending_hash_key": int(hash_range["EndingHashKey"]),
                "records": _read_shard(client, stream_name, shard, max_empty_polls),
            }
        )
    per_shard: dict[str, list[UserRecord]] = {shard["ShardId"]: [] for shard in shards}
    for record in deaggregate_shards(inputs):
        per_shard[record.shard_id].append(record)
    return per_shard


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.kcl fetch | classpath``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tools.kcl")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fetch", help="fetch the KCL jars and compile KclDeaggregate (once)")
    sub.add_parser("classpath", help="print the -cp of KclDeaggregate (fetching first)")
    args = parser.parse_args(argv)
    try:
        fetch()
        if args.command == "classpath":
            print(classpath())
    except KclToolsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
