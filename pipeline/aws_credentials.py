"""``segment-events aws-credentials``: AWS keys from the machine's own Google identity.

Made for boto3's ``credential_process`` on Dataflow workers (docs/operations/dataflow.md)::

    [default]
    credential_process = segment-events aws-credentials --role-arn arn:aws:iam::123456789012:role/segment-events

Each run:

1. asks the GCE metadata server (``$GCE_METADATA_HOST``, else
   ``metadata.google.internal``) for a Google-signed ID token of the VM's service
   account, with the given audience (default ``sts.amazonaws.com``);
2. checks the token's issue time against this machine's clock;
3. calls STS ``AssumeRoleWithWebIdentity`` unsigned (boto3 honours
   ``AWS_ENDPOINT_URL_STS`` and the region of the environment or profile; with no
   region, the global endpoint);
4. checks the STS answer's ``Date`` against this machine's clock;
5. prints ``{"Version": 1, "AccessKeyId", "SecretAccessKey", "SessionToken",
   "Expiration"}`` on standard output; boto3 runs it again before ``Expiration``.

Every failure is one ``error:`` line on standard error and one exit code:

====  ===========================================================================
code  meaning
====  ===========================================================================
0     the credentials are on standard output
1     an unexpected failure (a bug): only the exception's type is printed
2     usage error (a missing or malformed flag)
3     no metadata server: connection refused, unknown host, no answer, or an
      answer without ``Metadata-Flavor: Google`` (not on Google Cloud?)
4     token refused: the metadata server answered an HTTP error (no service
      account on the VM, a bad audience, a server error after 3 attempts), or
      something that is not an ID token
5     STS denied: ``AccessDenied`` (the role's trust policy), ``InvalidIdentityToken``,
      ``ExpiredToken``, ``IDPRejectedClaim``
6     clock skew: this machine's clock is more than 5 minutes away from the
      token's issue time or from STS's ``Date``, or STS says the token is not
      valid yet
7     STS failed otherwise: unreachable, throttled, a server error, an answer
      without keys
====  ===========================================================================

The ID token, the access key id, the secret key and the session token never reach a
log or standard error: the libraries that log request or response bodies are kept
at INFO or above (even with ``LOG_LEVEL=DEBUG``), and every message printed is
scrubbed of them.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime as dt
import email.utils
import json
import logging
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from typing import Any

from transforms.errors import SegmentEventsError

_LOGGER = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_NO_METADATA_SERVER = 3
EXIT_TOKEN_REFUSED = 4
EXIT_STS_DENIED = 5
EXIT_CLOCK_SKEW = 6
EXIT_STS_FAILED = 7

METADATA_HOST_ENV = "GCE_METADATA_HOST"
DEFAULT_METADATA_HOST = "metadata.google.internal"
IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"
DEFAULT_AUDIENCE = "sts.amazonaws.com"
DEFAULT_DURATION_S = 3600
MIN_DURATION_S, MAX_DURATION_S = 900, 43200  # STS's bounds (botocore checks them too)
MAX_CLOCK_SKEW_S = 300  # SigV4 refuses requests signed more than 5 minutes off
METADATA_TIMEOUT_S = 5.0
METADATA_ATTEMPTS = 3
# Libraries whose DEBUG logs hold request or response bodies (the token, the keys).
_CAPPED_LOGGERS = ("botocore", "boto3", "urllib3", "s3transfer")
_DENIED_CODES = frozenset(
    {"AccessDenied", "InvalidIdentityToken", "ExpiredToken", "ExpiredTokenException"}
    | {"IDPRejectedClaim"}
)
_NOT_YET_VALID = re.compile(
    r"used before issued|not yet valid|issued in the future|before it was issued|"
    r"\bnbf\b|\biat\b|clock|skew",
    re.IGNORECASE,
)
_ROLE_ARN = re.compile(r"arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}")
_SESSION_NAME = re.compile(r"[\w+=,.@-]{2,64}")
_JWT = re.compile(r"[A-Za-z0-9_-]+\.([A-Za-z0-9_-]+)\.[A-Za-z0-9_-]+")


class CredentialsError(SegmentEventsError):
    """A failure with its exit code and its one-line message (which holds no secret)."""

    def __init__(self, exit_code: int, message: str):
        super().__init__(message)
        self.exit_code = exit_code


class _UsageError(SegmentEventsError, ValueError):
    """A flag is missing or malformed."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse would print usage and exit
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="segment-events aws-credentials",
        description="Print temporary AWS credentials (boto3 credential_process JSON) "
        "for an IAM role, from the Google ID token of this VM's service account.",
    )
    parser.add_argument("--role-arn", required=True, help="the IAM role to assume")
    parser.add_argument(
        "--audience",
        default=DEFAULT_AUDIENCE,
        help=f"audience of the Google ID token. Default: {DEFAULT_AUDIENCE}",
    )
    parser.add_argument(
        "--session-name",
        default=None,
        help="STS role session name (CloudTrail). Default: segment-events-HOSTNAME",
    )
    parser.add_argument(
        "--duration-seconds",
        type=int,
        default=DEFAULT_DURATION_S,
        help=f"lifetime of the keys, {MIN_DURATION_S} to {MAX_DURATION_S} (at most the "
        f"role's maximum session duration). Default: {DEFAULT_DURATION_S}",
    )
    return parser


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Parses and checks the flags; raises ``_UsageError`` with a one-line message."""
    args = _parser().parse_args(list(argv))
    if not _ROLE_ARN.fullmatch(args.role_arn):
        raise _UsageError("--role-arn must look like arn:aws:iam::ACCOUNT:role/NAME")
    if not args.audience.strip():
        raise _UsageError("--audience must not be empty")
    if args.session_name is None:
        host = re.sub(r"[^\w+=,.@-]", "-", socket.gethostname())
        args.session_name = f"segment-events-{host}"[:64]
    if not _SESSION_NAME.fullmatch(args.session_name):
        raise _UsageError("--session-name must be 2 to 64 of letters, digits and +=,.@_-")
    if not MIN_DURATION_S <= args.duration_seconds <= MAX_DURATION_S:
        raise _UsageError(
            f"--duration-seconds must be between {MIN_DURATION_S} and {MAX_DURATION_S}"
        )
    return args


def metadata_host() -> str:
    """``host[:port]`` of the metadata server: ``$GCE_METADATA_HOST`` or Google's name."""
    return os.environ.get(METADATA_HOST_ENV) or DEFAULT_METADATA_HOST


def fetch_id_token(audience: str, host: str) -> str:
    """Asks the metadata server for an ID token; retries timeouts and 5xx answers.

    Raises:
        CredentialsError: no metadata server (3) or token refused (4).
    """
    query = urllib.parse.urlencode({"audience": audience, "format": "full"})
    request = urllib.request.Request(
        f"http://{host}{IDENTITY_PATH}?{query}", headers={"Metadata-Flavor": "Google"}
    )
    for attempt in range(1, METADATA_ATTEMPTS + 1):
        last = attempt == METADATA_ATTEMPTS
        try:
            with urllib.request.urlopen(request, timeout=METADATA_TIMEOUT_S) as answer:
                _check_flavor(answer.headers, host)
                return answer.read(65536).decode("ascii", errors="replace").strip()
        except urllib.error.HTTPError as err:
            _check_flavor(err.headers, host)
            if err.code >= 500 and not last:
                _LOGGER.info("metadata server: HTTP %s, attempt %d", err.code, attempt)
                time.sleep(0.5 * attempt)
                continue
            hint = " (is a service account attached to the VM?)" if err.code == 404 else ""
            raise CredentialsError(
                EXIT_TOKEN_REFUSED,
                f"the metadata server at {host} refused the ID token: HTTP {err.code} "
                f"{err.reason}{hint}",
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            if isinstance(reason, TimeoutError) and not last:
                _LOGGER.info("metadata server: no answer in time, attempt %d", attempt)
                continue
            raise CredentialsError(
                EXIT_NO_METADATA_SERVER,
                f"no metadata server at {host} ({_describe_os_error(reason)}): not on "
                f"Google Cloud? Set {METADATA_HOST_ENV} to reach one",
            ) from None
    raise AssertionError("unreachable")  # the last attempt returns or raises


def _check_flavor(headers: Any, host: str) -> None:
    """The metadata server sends ``Metadata-Flavor: Google`` with every answer."""
    if headers is None or headers.get("Metadata-Flavor") != "Google":
        raise CredentialsError(
            EXIT_NO_METADATA_SERVER,
            f"{host} answered without the header Metadata-Flavor: Google, so it is not a "
            f"metadata server (set {METADATA_HOST_ENV})",
        )


def _describe_os_error(reason: object) -> str:
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"no answer within {METADATA_TIMEOUT_S:.0f} s"
    return type(reason).__name__ if isinstance(reason, BaseException) else str(reason)


def token_claims(token: str, host: str) -> dict[str, Any]:
    """The claims of an ID token (not verified: STS verifies the signature)."""
    match = _JWT.fullmatch(token)
    claims: Any = None
    if match:
        payload = match.group(1)
        try:
            claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        except (binascii.Error, ValueError):
            claims = None
    if not isinstance(claims, dict):
        raise CredentialsError(
            EXIT_TOKEN_REFUSED,
            f"the metadata server at {host} answered something that is not an ID token (a JWT)",
        )
    return claims


def check_token_clock(claims: dict[str, Any], now: float) -> None:
    """Fails when the token's ``iat`` or ``exp`` says this machine's clock is off."""
    issued, expires = claims.get("iat"), claims.get("exp")
    if isinstance(issued, int | float) and issued - now > MAX_CLOCK_SKEW_S:
        raise CredentialsError(
            EXIT_CLOCK_SKEW,
            f"clock skew: the ID token was issued {issued - now:.0f} s after this "
            f"machine's time ({_iso(now)}); this clock is behind: fix its time sync (NTP)",
        )
    if isinstance(expires, int | float) and now - expires > MAX_CLOCK_SKEW_S:
        raise CredentialsError(
            EXIT_CLOCK_SKEW,
            f"clock skew: the fresh ID token expired {now - expires:.0f} s before this "
            f"machine's time ({_iso(now)}); this clock is ahead: fix its time sync (NTP)",
        )


def assume_role(token: str, args: argparse.Namespace) -> dict[str, Any]:
    """Calls STS ``AssumeRoleWithWebIdentity`` (unsigned); returns ``Credentials``.

    Raises:
        CredentialsError: STS denied (5), clock skew (6) or STS failed (7).
    """
    import boto3
    import botocore
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    config = Config(
        signature_version=botocore.UNSIGNED,
        connect_timeout=5,
        read_timeout=15,
        retries={"mode": "standard", "total_max_attempts": 3},
    )
    client = boto3.session.Session().client("sts", config=config)
    endpoint = client.meta.endpoint_url
    try:
        answer = client.assume_role_with_web_identity(
            RoleArn=args.role_arn,
            RoleSessionName=args.session_name,
            WebIdentityToken=token,
            DurationSeconds=args.duration_seconds,
        )
    except ClientError as err:
        _check_server_clock(err.response, endpoint)
        error = err.response.get("Error", {})
        code, message = str(error.get("Code", "?")), str(error.get("Message", ""))
        if code in _DENIED_CODES and _NOT_YET_VALID.search(message):
            raise CredentialsError(
                EXIT_CLOCK_SKEW,
                f"clock skew: STS at {endpoint} says the ID token is not valid yet ({code}: "
                f"{message}); fix the time sync (NTP)",
            ) from None
        if code in _DENIED_CODES:
            raise CredentialsError(
                EXIT_STS_DENIED,
                f"STS at {endpoint} denied AssumeRoleWithWebIdentity on {args.role_arn}: "
                f"{code}: {message}",
            ) from None
        raise CredentialsError(
            EXIT_STS_FAILED, f"STS at {endpoint} failed: {code}: {message}"
        ) from None
    except BotoCoreError as err:
        raise CredentialsError(
            EXIT_STS_FAILED, f"STS at {endpoint} could not be called: {type(err).__name__}: {err}"
        ) from None
    _check_server_clock(answer, endpoint)
    credentials = answer.get("Credentials") or {}
    if not all(credentials.get(k) for k in ("AccessKeyId", "SecretAccessKey", "SessionToken")):
        raise CredentialsError(EXIT_STS_FAILED, f"STS at {endpoint} answered without keys")
    if not isinstance(credentials.get("Expiration"), dt.datetime):
        raise CredentialsError(EXIT_STS_FAILED, f"STS at {endpoint} answered no Expiration")
    return credentials


def _check_server_clock(response: dict[str, Any], endpoint: str) -> None:
    """Fails when STS's ``Date`` header is more than 5 minutes from this clock."""
    header = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        server = email.utils.parsedate_to_datetime(header).timestamp() if header else None
    except (TypeError, ValueError):
        server = None
    if server is None:
        return
    skew = time.time() - server
    if abs(skew) > MAX_CLOCK_SKEW_S:
        side = "ahead of" if skew > 0 else "behind"
        raise CredentialsError(
            EXIT_CLOCK_SKEW,
            f"clock skew: this machine's clock is {abs(skew):.0f} s {side} STS's ({endpoint} "
            f"says {header}); signed AWS requests would be refused: fix the time sync (NTP)",
        )


def credential_process_json(credentials: dict[str, Any]) -> str:
    """The ``credential_process`` output (version 1) of STS ``Credentials``."""
    expiration = credentials["Expiration"].astimezone(dt.UTC).replace(microsecond=0)
    return json.dumps(
        {
            "Version": 1,
            "AccessKeyId": credentials["AccessKeyId"],
            "SecretAccessKey": credentials["SecretAccessKey"],
            "SessionToken": credentials["SessionToken"],
            "Expiration": expiration.isoformat().replace("+00:00", "Z"),
        }
    )


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _scrub(text: str, secrets: Sequence[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return " ".join(text.split())


def configure_logging() -> None:
    """Logs to standard error at ``LOG_LEVEL`` (default WARNING); libraries at INFO+."""
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    level = level if level in logging.getLevelNamesMapping() else "WARNING"
    logging.basicConfig(stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(level)
    capped = max(logging.getLevelNamesMapping()[level], logging.INFO)
    for name in _CAPPED_LOGGERS:
        logging.getLogger(name).setLevel(capped)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command; returns its exit code (see the module's table)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    configure_logging()
    if "-h" in argv or "--help" in argv:
        _parser().print_help()
        return EXIT_OK
    try:
        args = parse_args(argv)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    secrets: list[str] = []
    try:
        host = metadata_host()
        token = fetch_id_token(args.audience, host)
        secrets.append(token)
        claims = token_claims(token, host)
        _LOGGER.info("ID token from %s: sub=%s aud=%s", host, claims.get("sub"), claims.get("aud"))
        check_token_clock(claims, time.time())
        credentials = assume_role(token, args)
        secrets += [str(credentials[k]) for k in ("AccessKeyId", "SecretAccessKey")]
        secrets.append(str(credentials["SessionToken"]))
        _LOGGER.info(
            "assumed %s as %s until %s",
            args.role_arn,
            args.session_name,
            credentials["Expiration"],
        )
        print(credential_process_json(credentials), flush=True)
        return EXIT_OK
    except CredentialsError as err:
        print(f"error: {_scrub(str(err), secrets)}", file=sys.stderr)
        return err.exit_code
    except Exception as err:  # noqa: BLE001 - a bug: the type only (a message may hold secrets)
        print(f"error: unexpected failure: {type(err).__name__}", file=sys.stderr)
        return EXIT_UNEXPECTED


if __name__ == "__main__":
    sys.exit(main())
