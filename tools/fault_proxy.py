"""A fault-injecting HTTP proxy on 127.0.0.1 in front of a local Kinesis (kinesalite).

Standard library only. Clients point their ``endpoint_url`` at the proxy; requests go to
kinesalite unchanged unless a fault is armed. Faults apply to PutRecords only (ListShards,
GetRecords... pass through) and are armed by count of PutRecords requests, so tests are
deterministic:

* ``throttle_shards(ranges, requests)``: in the next ``requests`` PutRecords requests that
  carry entries hashing (MD5 of the partition key, or the explicit hash key) into one of the
  ranges, those entries fail with ``ProvisionedThroughputExceededException`` and the others
  are forwarded — as a real per-shard throttle does.
* ``fail_entries(code, every, requests)``: every ``every``-th entry fails with ``code``
  (e.g. ``InternalFailure``) in the next ``requests`` requests; the rest is forwarded.
* ``http_error(status, requests)``: answer 500/503 (or a 400 error ``code``) without
  forwarding.
* ``reset(requests, after_forward=False)``: drop the connection with a TCP reset, before
  forwarding, or after forwarding (the records are written but the answer is lost).
* ``latency(seconds, requests)``: forward, then delay the answer.
* ``down(requests=None, seconds=None)``: reset every request (of any operation) for a number
  of requests or seconds, then come back.
* ``before_put_records(n, hook)``: call ``hook()`` before forwarding the ``n``-th PutRecords
  request (1-based), e.g. to reshard the real stream at a known point of a write.

``stats`` counts requests per operation, PutRecords entries received, and injected faults,
so tests can assert there was no retry storm.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import http.client
import json
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlparse

_THROTTLE = "ProvisionedThroughputExceededException"


def hash_key_of(entry: dict[str, Any]) -> int:
    """The hash Kinesis routes a PutRecords entry by (explicit hash key wins)."""
    if entry.get("ExplicitHashKey"):
        return int(entry["ExplicitHashKey"])
    return int.from_bytes(hashlib.md5(entry["PartitionKey"].encode("utf-8")).digest(), "big")


@dataclasses.dataclass
class _Fault:
    kind: str
    remaining: int | None  # requests left; None: until ``until``
    until: float | None = None
    ranges: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    code: str = ""
    every: int = 1
    status: int = 500
    seconds: float = 0.0
    after_forward: bool = False
    timed: bool = False  # active for ``seconds`` from the first request it applies to

    def active(self, now: float) -> bool:
        if self.until is not None:
            return now < self.until
        return self.remaining is None or self.remaining > 0


@dataclasses.dataclass
class ProxyStats:
    """What went through the proxy (read under the proxy's lock via ``snapshot``)."""

    requests: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    put_records_requests: int = 0
    put_records_entries: int = 0
    entries_per_request: list[int] = dataclasses.field(default_factory=list)
    request_times: list[float] = dataclasses.field(default_factory=list)
    access_keys: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    injected: collections.Counter = dataclasses.field(default_factory=collections.Counter)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (read timeout) while the proxy was answering late is part
        # of the tests, not an error worth a traceback.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FaultProxy:
    """The proxy server; start with ``start()`` or use as a context manager."""

    def __init__(self, upstream_url: str):
        parsed = urlparse(upstream_url)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._stats = ProxyStats()
        self._entry_counter = 0
        self._hooks: dict[int, Any] = {}
        # Hooks run one at a time and in their order, whichever request reaches them.
        self._hook_lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler_class(self))
        self._thread: threading.Thread | None = None

    @property
    def endpoint_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -------------------------------------------------------------- arming faults

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def _arm(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def throttle_shards(self, ranges: list[tuple[int, int]], requests: int | None) -> None:
        self._arm(_Fault("throttle", requests, ranges=list(ranges)))

    def fail_entries(self, code: str, every: int, requests: int | None) -> None:
        self._arm(_Fault("entries", requests, code=code, every=every))

    def http_error(self, status: int, requests: int, code: str = "") -> None:
        self._arm(_Fault("http", requests, status=status, code=code))

    def reset(self, requests: int, after_forward: bool = False) -> None:
        self._arm(_Fault("reset", requests, after_forward=after_forward))

    def latency(self, seconds: float, requests: int) -> None:
        self._arm(_Fault("latency", requests, seconds=seconds))

    def down(self, requests: int | None = None, seconds: float | None = None) -> None:
        """Resets every request for ``requests`` requests, or for ``seconds`` counted from
        the first request that arrives after arming (so pipeline start-up does not eat it)."""
        self._arm(
            _Fault(
                "down",
                requests if seconds is None else None,
                seconds=seconds or 0.0,
                timed=seconds is not None,
            )
        )

    def before_put_records(self, n: int, hook: Any) -> None:
        """Calls ``hook()`` before the ``n``-th PutRecords request (1-based) is forwarded.

        The request waits for the hook. Hooks run in their order, one at a time: a
        request that reaches a later hook while an earlier one runs waits for it (with
        several requests in flight, the 4th may arrive while the 2nd's hook runs).
        """
        with self._lock:
            self._hooks[n] = hook

    def _run_due_hooks(self) -> None:
        with self._lock:
            if not self._hooks:
                return
        with self._hook_lock:
            with self._lock:
                due = sorted(n for n in self._hooks if n <= self._stats.put_records_requests)
                hooks = [self._hooks.pop(n) for n in due]
            for hook in hooks:
                hook()

    def snapshot(self) -> ProxyStats:
        """A copy of the statistics."""
        with self._lock:
            s = self._stats
            return ProxyStats(
                collections.Counter(s.requests),
                s.put_records_requests,
                s.put_records_entries,
                list(s.entries_per_request),
                list(s.request_times),
                collections.Counter(s.access_keys),
                collections.Counter(s.injected),
            )

    # -------------------------------------------------------------- per request

    def _plan(self, operation: str, authorization: str) -> list[_Fault]:
        """Picks the faults that apply to this request and consumes one use of each."""
        now = time.monotonic()
        # "AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request, ...": the key
        # id only (never a secret), so tests can tell which credentials signed the request.
        access_key = authorization.partition("Credential=")[2].partition("/")[0]
        with self._lock:
            self._stats.requests[operation] += 1
            self._stats.access_keys[access_key] += 1
            chosen = []
            for fault in self._faults:
                if fault.timed and fault.until is None:
                    fault.until = now + fault.seconds
                if not fault.active(now):
                    continue
                if fault.kind != "down" and operation != "PutRecords":
                    continue
                chosen.append(fault)
                if fault.remaining is not None and fault.kind != "throttle":
                    fault.remaining -= 1
            self._faults = [f for f in self._faults if f.active(now)]
            return chosen

    def _count_entries(self, n: int) -> None:
        with self._lock:
            self._stats.put_records_requests += 1
            self._stats.put_records_entries += n
            self._stats.entries_per_request.append(n)
            self._stats.request_times.append(time.monotonic())

    def _injected(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self._stats.injected[kind] += n

    def _entry_failures(
        self, records: list[dict[str, Any]], faults: list[_Fault]
    ) -> dict[int, tuple[str, str]]:
        """Index -> (code, message) of the entries to fail in this request."""
        failures: dict[int, tuple[str, str]] = {}
        with self._lock:
            for fault in faults:
                if fault.kind == "throttle":
                    hit = False
                    for i, entry in enumerate(records):
                        h = hash_key_of(entry)
                        if any(lo <= h <= hi for lo, hi in fault.ranges):
                            failures[i] = (_THROTTLE, "Rate exceeded for shard in stream")
                            hit = True
                    if hit and fault.remaining is not None:
                        fault.remaining -= 1
                elif fault.kind == "entries":
                    for i in range(len(records)):
                        self._entry_counter += 1
                        if self._entry_counter % fault.every == 0:
                            failures.setdefault(i, (fault.code, "Injected entry failure"))
        return failures


def _handler_class(proxy: FaultProxy) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        upstream: http.client.HTTPConnection | None = None

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
            pass

        def finish(self) -> None:
            super().finish()
            if self.upstream is not None:
                self.upstream.close()

        def _reset(self) -> None:
            # SO_LINGER with a zero timeout makes close() send a TCP RST.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()

        def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() not in ("host", "content-length", "connection")
            }
            headers["Content-Length"] = str(len(body))
            for attempt in range(2):
                if self.upstream is None:
                    self.upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    self.upstream.request("POST", self.path, body=body, headers=headers)
                    resp = self.upstream.getresponse()
                    return resp.status, resp.getheaders(), resp.read()
                except (OSError, http.client.HTTPException):
                    # A stale keep-alive connection to kinesalite: reconnect once.
                    self.upstream.close()
                    self.upstream = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def _reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            operation = (self.headers.get("X-Amz-Target") or ".").split(".")[-1]
            content_type = self.headers.get("Content-Type", "application/x-amz-json-1.1")
            faults = proxy._plan(operation, self.headers.get("Authorization", ""))
            kinds = {f.kind for f in faults}
            if "down" in kinds:
                proxy._injected("down")
                return self._reset()
            if operation != "PutRecords":
                status, headers, resp = self._forward(body)
                return self._reply(status, resp, dict(headers).get("Content-Type", content_type))

            request = json.loads(body)
            records = request["Records"]
            proxy._count_entries(len(records))
            proxy._run_due_hooks()
            for fault in faults:
                if fault.kind == "http":
                    proxy._injected(f"http_{fault.status}")
                    if fault.code:
                        payload = json.dumps({"__type": fault.code, "message": "Injected"})
                        return self._reply(fault.status, payload.encode(), content_type)
                    if fault.status == 503:  # a non-JSON body, as a load balancer sends
                        return self._reply(503, b"Service Unavailable", "text/plain")
                    payload = json.dumps({"__type": "InternalFailure", "message": "Injected"})
                    return self._reply(fault.status, payload.encode(), content_type)
            reset = next((f for f in faults if f.kind == "reset"), None)
            if reset is not None and not reset.after_forward:
                proxy._injected("reset")
                return self._reset()

            failures = proxy._entry_failures(records, faults)
            forward_idx = [i for i in range(len(records)) if i not in failures]
            results: list[dict[str, Any] | None] = [None] * len(records)
            upstream_failed = 0
            if forward_idx:
                sub = dict(request, Records=[records[i] for i in forward_idx])
                status, headers, resp = self._forward(json.dumps(sub).encode())
                if status != 200:  # an upstream error goes back as is
                    return self._reply(
                        status, resp, dict(headers).get("Content-Type", content_type)
                    )
                upstream = json.loads(resp)
                upstream_failed = upstream.get("FailedRecordCount", 0)
                for i, res in zip(forward_idx, upstream["Records"], strict=True):
                    results[i] = res
            for i, (code, message) in failures.items():
                results[i] = {"ErrorCode": code, "ErrorMessage": message}
                proxy._injected(code)
            for fault in faults:
                if fault.kind == "latency":
                    # After forwarding: the records are written, the answer is late (and may
                    # miss the client's read timeout, as a slow real response does).
                    proxy._injected("latency")
                    time.sleep(fault.seconds)
            if reset is not None:
                proxy._injected("reset_after_forward")
                return self._reset()
            out = {"FailedRecordCount": upstream_failed + len(failures), "Records": results}
            self._reply(200, json.dumps(out).encode(), content_type)

    return Handler
