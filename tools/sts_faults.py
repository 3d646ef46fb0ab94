"""A fault-injecting proxy on 127.0.0.1 in front of a local STS (moto's server).

moto's STS grants every ``AssumeRoleWithWebIdentity`` and dates its answers with the
local clock, so the failures of ``segment-events aws-credentials`` that come from STS
are injected here, in front of it (standard library only)::

    python -m tools.sts_faults --port PORT --upstream http://127.0.0.1:MOTO_PORT \\
        [--error CODE [--message TEXT] [--status N]] [--date-offset SECONDS]

* ``--error CODE``: answer every request with STS's XML error (``ErrorResponse``,
  type ``Sender``) of that code, without forwarding; the status defaults to the one STS
  uses for the code (``AccessDenied`` 403, ``IDPRejectedClaim`` 403, others 400).
* ``--date-offset S``: forward to the upstream and move the ``Date`` header of its
  answer (and of injected errors) by S seconds, as a machine whose clock is off by -S
  would see it.

The request log (standard error) names the STS action and the answer; never the body,
which holds the ID token, nor the answer's, which holds the keys.
"""

from __future__ import annotations

import argparse
import email.utils
import http.client
import sys
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

_STATUS = {"AccessDenied": 403, "IDPRejectedClaim": 403}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "date", "server", "content-length"}


def error_body(code: str, message: str) -> bytes:
    """STS's (query protocol) XML error document."""
    return (
        '<ErrorResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">'
        f"<Error><Type>Sender</Type><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error>"
        f"<RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
    ).encode()


def _handler_class(args: argparse.Namespace) -> type[BaseHTTPRequestHandler]:
    upstream = urlparse(args.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: Any) -> None:  # noqa: A002 - http.server API
            pass  # one line per request is written by do_POST

        def _date(self) -> str:
            return email.utils.formatdate(time.time() + args.date_offset, usegmt=True)

        def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response_only(status)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            self.send_header("Date", self._date())
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True

        def do_POST(self) -> None:  # noqa: N802 - http.server API
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            action = (parse_qs(body.decode("utf-8", "replace")).get("Action") or ["?"])[0]
            if args.error:
                status = args.status or _STATUS.get(args.error, 400)
                # Logged before the answer, so that the log is complete when the client has it.
                sys.stderr.write(f"sts_faults: {action} -> {status} (injected {args.error})\n")
                body = error_body(args.error, args.message)
                self._send(status, [("Content-Type", "text/xml")], body)
                return
            conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=30)
            try:
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                conn.request("POST", self.path, body=body, headers=headers)
                answer = conn.getresponse()
                data = answer.read()
                sys.stderr.write(
                    f"sts_faults: {action} -> {answer.status} (forwarded, Date moved by "
                    f"{args.date_offset} s)\n"
                )
                self._send(answer.status, answer.getheaders(), data)
            finally:
                conn.close()

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Runs the proxy in the foreground until it is stopped (SIGTERM)."""
    parser = argparse.ArgumentParser(prog="python -m tools.sts_faults", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of moto")
    parser.add_argument("--error", default=None, help="an STS error code to answer")
    parser.add_argument("--message", default="injected by tools.sts_faults")
    parser.add_argument("--status", type=int, default=None)
    parser.add_argument("--date-offset", type=int, default=0)
    args = parser.parse_args(argv)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), _handler_class(args))
    server.daemon_threads = True
    print(f"sts_faults: listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
