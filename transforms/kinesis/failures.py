"""The sink's error, and the classification of PutRecords failures into fatal,
throttled and retryable.

The sink retries by itself (botocore retries are off), so every exception and every
failed response entry is sorted here into one of three kinds:

* ``FATAL``: retrying cannot help (missing stream, no permission, bad request, KMS key
  unusable, no credentials). The job fails at once with a one-line message.
* ``THROTTLED``: the stream or a shard is over its limits; retried with backoff and the
  adaptive rate limiter slows down.
* ``RETRYABLE``: transient (5xx, internal failure, timeout, connection error); retried with
  backoff.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from botocore import exceptions as boto_exc

from transforms.errors import SegmentEventsError

FATAL = "fatal"
THROTTLED = "throttled"
RETRYABLE = "retryable"

_THROTTLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "Throttling",
        "ThrottledException",
        "LimitExceededException",
        "KMSThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "SlowDown",
    }
)

_RETRYABLE_CODES = frozenset(
    {
        "InternalFailure",
        "InternalError",
        "InternalServerError",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
        "IDPCommunicationError",
        "PriorRequestNotComplete",
    }
)

_FATAL_CODES = frozenset(
    {
        "ResourceNotFoundException",
        "ResourceInUseException",
        "ValidationException",
        "InvalidArgumentException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "InvalidClientTokenId",
        "ExpiredToken",
        "ExpiredTokenException",
        "NotAuthorized",
        "SerializationException",
        "UnknownOperationException",
        "OptInRequired",
    }
)

_MAX_MESSAGE_CHARS = 500


class KinesisSinkError(SegmentEventsError, RuntimeError):
    """A Kinesis failure that must fail the job (fatal error, or undeliverable record with
    the dead letter disabled). The message is one line naming the stream and the error."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """One classified failure.

    Attributes:
        kind: FATAL, THROTTLED or RETRYABLE.
        code: the Kinesis error code or the exception class name.
        message: a one-line, truncated message (no credentials: AWS never echoes them).
        unreachable: no answer came from the endpoint at all (connection refused or
            reset, DNS failure, connect timeout), as opposed to a late or error answer.
    """

    kind: str
    code: str
    message: str
    unreachable: bool = False

    def describe(self) -> str:
        """Returns ``"Code: message"`` for dead letters and logs."""
        return f"{self.code}: {self.message}" if self.message else self.code


def _one_line(text: Any) -> str:
    return " ".join(str(text or "").split())[:_MAX_MESSAGE_CHARS]


def classify_code(code: str, http_status: int | None = None) -> str:
    """Returns the kind of a Kinesis error code (request-level or per-entry)."""
    if code in _THROTTLE_CODES or http_status == 429:
        return THROTTLED
    if code.startswith("KMS") or "AccessDenied" in code or code in _FATAL_CODES:
        return FATAL
    if code in _RETRYABLE_CODES or (http_status is not None and http_status >= 500):
        return RETRYABLE
    if http_status is None:
        # A per-entry error code we do not know: the entry was not written, retrying is safe
        # and bounded, while failing the whole job for it would be out of proportion.
        return RETRYABLE
    # An unknown 4xx for the whole request means the request itself is wrong.
    return FATAL


def classify_entry_error(code: str | None, message: str | None) -> Failure:
    """Classifies the ErrorCode/ErrorMessage of one failed PutRecords response entry."""
    code = code or "UnknownEntryError"
    return Failure(classify_code(code), code, _one_line(message))


def classify_exception(exc: BaseException) -> Failure:
    """Classifies an exception raised by ``client.put_records`` (or ListShards)."""
    if isinstance(exc, boto_exc.ClientError):
        error = exc.response.get("Error", {}) or {}
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(error.get("Code") or status or "UnknownClientError")
        return Failure(classify_code(code, status), code, _one_line(error.get("Message")))
    name = type(exc).__name__
    if isinstance(exc, (boto_exc.ConnectionError, boto_exc.ConnectionClosedError)):
        # Connection refused/reset, DNS, connect timeout: transient, but no answer at all.
        return Failure(RETRYABLE, name, _one_line(exc), unreachable=True)
    if isinstance(exc, boto_exc.HTTPClientError):
        # Read timeouts and broken answers: transient. A read timeout may hide a success,
        # so a retry can duplicate (delivery is at-least-once).
        return Failure(RETRYABLE, name, _one_line(exc))
    if name in ("ResponseParserError", "IncompleteReadError"):
        return Failure(RETRYABLE, name, _one_line(exc))
    if isinstance(exc, boto_exc.BotoCoreError):
        # NoCredentialsError, NoRegionError, ParamValidationError, CredentialRetrievalError..
        return Failure(FATAL, name, _one_line(exc))
    if isinstance(exc, ConnectionError):
        return Failure(RETRYABLE, name, _one_line(exc), unreachable=True)
    if isinstance(exc, TimeoutError):
        return Failure(RETRYABLE, name, _one_line(exc))
    return Failure(FATAL, name, _one_line(exc))
