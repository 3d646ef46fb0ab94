"""Micro-benchmark: what user state costs per key on the local FnApiRunner.

Runs N keys through a GroupByKey and then one of several DoFns, side by side, and prints
the time of each and its ratio to the stateless DoFn, with the SDK's state cache as Beam
configures it (on, 100 MB) and, with ``--state_cache both``, switched off.

Where the time goes: on every state cache load or write the SDK sizes the value with
``objsize.get_deep_size``, which first collects the globals of *every loaded module*
(``sys.modules``) into an exclude set. The cost per state access therefore grows with
the number of imported modules (~2,000 in this job: Beam, boto3, pyarrow), not with the
value: a 50-byte ``bytes`` value costs the same ~2 ms as a large one.

    python bench/bench_state_cost.py [--keys 20000] [--modes plain,bag_add,bag_read,rmw_write]
                                     [--state_cache on|off|both]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import apache_beam as beam  # noqa: E402
from apache_beam.coders import BytesCoder  # noqa: E402
from apache_beam.transforms.userstate import (  # noqa: E402
    BagStateSpec,
    ReadModifyWriteStateSpec,
)

from pipeline.runners import OfflineDirectRunner  # noqa: E402

_VALUE = b"x" * 50


class _Plain(beam.DoFn):
    def process(self, element):
        yield len(element[1])


class _BagAdd(beam.DoFn):
    BUFFER = BagStateSpec("buffer", BytesCoder())

    def process(self, element, buffer=beam.DoFn.StateParam(BUFFER)):  # noqa: B008 - Beam idiom
        buffer.add(_VALUE)
        yield len(element[1])


class _BagRead(beam.DoFn):
    BUFFER = BagStateSpec("buffer", BytesCoder())

    def process(self, element, buffer=beam.DoFn.StateParam(BUFFER)):  # noqa: B008 - Beam idiom
        _ = list(buffer.read())
        buffer.add(_VALUE)
        yield len(element[1])


class _RmwWrite(beam.DoFn):
    CELL = ReadModifyWriteStateSpec("cell", BytesCoder())

    def process(self, element, cell=beam.DoFn.StateParam(CELL)):  # noqa: B008 - Beam idiom
        cell.write(_VALUE)
        yield len(element[1])


MODES = {"plain": _Plain, "bag_add": _BagAdd, "bag_read": _BagRead, "rmw_write": _RmwWrite}


def time_mode(mode: str, keys: int, state_cache: bool = True) -> float:
    """Seconds to group ``keys`` keys and run the mode's DoFn once per key."""
    # The in-process worker's cache size is a module constant (no pipeline option).
    from apache_beam.runners.portability.fn_api_runner import worker_handlers

    configured = worker_handlers.STATE_CACHE_SIZE_MB
    if not state_cache:
        worker_handlers.STATE_CACHE_SIZE_MB = 0
    try:
        return _time_mode(mode, keys)
    finally:
        worker_handlers.STATE_CACHE_SIZE_MB = configured


def _time_mode(mode: str, keys: int) -> float:
    started = time.perf_counter()
    with beam.Pipeline(runner=OfflineDirectRunner()) as pipeline:
        counted = (
            pipeline
            | "CreateKeys" >> beam.Create([(f"k{i}", i) for i in range(keys)])
            | "GroupByKey" >> beam.GroupByKey()
            | "Visit" >> beam.ParDo(MODES[mode]())
            | "Count" >> beam.combiners.Count.Globally()
        )
        counted | "Check" >> beam.Map(_check, keys)
    return time.perf_counter() - started


def _check(count: int, keys: int) -> None:
    if count != keys:
        raise RuntimeError(f"expected {keys} keys, counted {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=20_000, help="Keys. Default: 20000.")
    parser.add_argument(
        "--modes", default="plain,bag_add,bag_read,rmw_write", help="Comma-separated modes."
    )
    parser.add_argument(
        "--state_cache",
        choices=("on", "off", "both"),
        default="both",
        help="Run with the SDK state cache on (Beam's setting), off, or both. Default: both.",
    )
    args = parser.parse_args(argv)
    modes = args.modes.split(",")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    # Import what a job run imports, so that the module count (the cost driver) is real.
    import boto3  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import pipeline.graph  # noqa: F401

    print(f"{args.keys} keys; {len(sys.modules)} modules loaded")
    caches = {"on": [True], "off": [False], "both": [True, False]}[args.state_cache]
    for cache in caches:
        times = {mode: time_mode(mode, args.keys, cache) for mode in modes}
        base = times.get("plain")
        for mode, seconds in times.items():
            ratio = f"{seconds / base:6.1f}x" if base else ""
            print(
                f"cache {'on ' if cache else 'off'}  {mode:<10} {seconds:8.2f} s  "
                f"{1e6 * seconds / args.keys:8.0f} us/key  {ratio}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
