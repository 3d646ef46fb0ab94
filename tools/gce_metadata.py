"""A stand-in for the GCE metadata server's ID token endpoint, on 127.0.0.1 (standard library).

For tests of ``segment-events aws-credentials`` (pipeline/aws_credentials.py)::

    python -m tools.gce_metadata --port PORT [--fail-status N] [--clock-offset S]

Like the real server it answers
``GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=A[&format=full]``
only with the header ``Metadata-Flavor: Google`` (else 403), refuses a missing audience
(400), and sends ``Metadata-Flavor: Google`` with every answer. The token is a JWT
shaped like Google's (RS256 header, ``iss`` ``https://accounts.google.com``, ``aud``
the audience, ``azp`` and ``sub`` the service account's unique id, ``iat``, ``exp`` one
hour later, and with ``format=full`` the ``google.compute_engine`` claims); its
signature is random bytes, which a local STS (moto) does not check.

``--fail-status N`` answers every token request with HTTP N. ``--clock-offset S`` dates
the tokens S seconds from now, as a metadata server would see a machine whose clock is
S seconds behind.

``GET /__stub__/issued`` lists the tokens issued so far (JSON), so that a test can
check that none of them reached a log. The request log (standard error) never holds
a token.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
ISSUED_PATH = "/__stub__/issued"
DEFAULT_UNIQUE_ID = "108453212345678901234"
DEFAULT_EMAIL = "segment-events@my-project.iam.gserviceaccount.com"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def make_id_token(audience: str, *, unique_id: str, email: str, issued_at: int, full: bool) -> str:
    """A JWT shaped like a Google ID token of a service account (random signature)."""
    header = {"alg": "RS256", "kid": os.urandom(20).hex(), "typ": "JWT"}
    claims: dict[str, Any] = {
        "aud": audience,
        "azp": unique_id,
        "email": email,
        "email_verified": True,
        "exp": issued_at + 3600,
        "iat": issued_at,
        "iss": "https://accounts.google.com",
        "sub": unique_id,
    }
    if full:
        claims["google"] = {
            "compute_engine": {
                "instance_creation_timestamp": issued_at - 600,
                "instance_id": "4242424242424242424",
                "instance_name": "segment-events-worker",
                "project_id": "my-project",
                "project_number": 123456789012,
                "zone": "europe-west1-b",
            }
        }
    parts = [json.dumps(header).encode(), json.dumps(claims).encode(), os.urandom(256)]
    return ".".join(_b64url(part) for part in parts)


class MetadataStub:
    """The stub's state: its failure mode, clock offset and the tokens it issued."""

    def __init__(self, *, fail_status: int | None, clock_offset: int, unique_id: str, email: str):
        self.fail_status = fail_status
        self.clock_offset = clock_offset
        self.unique_id = unique_id
        self.email = email
        self._lock = threading.Lock()
        self._issued: list[str] = []

    def issue(self, audience: str, full: bool) -> str:
        token = make_id_token(
            audience,
            unique_id=self.unique_id,
            email=self.email,
            issued_at=int(time.time()) + self.clock_offset,
            full=full,
        )
        with self._lock:
            self._issued.append(token)
        return token

    def issued(self) -> list[str]:
        with self._lock:
            return list(self._issued)


def _handler_class(stub: MetadataStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server API
            # The path holds the audience only; the token is in no request.
            sys.stderr.write(f"gce_metadata: {format % args}\n")

        def _reply(self, status: int, body: str, content_type: str = "text/plain") -> None:
            data = body.encode("utf-8")
            self.send_response(status)
            self.send_header("Metadata-Flavor", "Google")
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - http.server API
            url = urlparse(self.path)
            if url.path == ISSUED_PATH:
                self._reply(200, json.dumps(stub.issued()), "application/json")
                return
            if url.path != IDENTITY_PATH:
                self._reply(404, "not found\n")
                return
            if self.headers.get("Metadata-Flavor") != "Google":
                self._reply(403, "Missing required header: Metadata-Flavor\n")
                return
            query = parse_qs(url.query)
            audience = (query.get("audience") or [""])[0]
            if not audience:
                self._reply(400, "non-empty audience parameter required\n")
                return
            if stub.fail_status is not None:
                self._reply(stub.fail_status, f"stub failure {stub.fail_status}\n")
                return
            full = (query.get("format") or [""])[0] == "full"
            self._reply(200, stub.issue(audience, full))

    return Handler


def serve(port: int, stub: MetadataStub) -> ThreadingHTTPServer:
    """A server for ``stub`` bound to 127.0.0.1:``port`` (not started)."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler_class(stub))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> int:
    """Runs the stub in the foreground until it is stopped (SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m tools.gce_metadata", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fail-status", type=int, default=None)
    parser.add_argument("--clock-offset", type=int, default=0)
    parser.add_argument("--unique-id", default=DEFAULT_UNIQUE_ID)
    parser.add_argument("--email", default=DEFAULT_EMAIL)
    args = parser.parse_args(argv)
    stub = MetadataStub(
        fail_status=args.fail_status,
        clock_offset=args.clock_offset,
        unique_id=args.unique_id,
        email=args.email,
    )
    server = serve(args.port, stub)
    print(f"gce_metadata: listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
