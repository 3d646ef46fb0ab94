"""Creation of the boto3 Kinesis client used by the sink.

Credentials come from boto3's default chain (environment, shared profile, container/instance
role, web identity); with ``role_arn`` they are exchanged for the role's through STS
AssumeRole and refreshed before they expire. Access keys are never parameters here.

botocore's own retries are off: the sink retries by itself so that it controls which entries
are retried, their order per partition key, the backoff and the rate limiting.
"""

from __future__ import annotations

import logging
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import AssumeRoleCredentialFetcher, DeferredRefreshableCredentials

from transforms.errors import SegmentEventsError
from transforms.kinesis.aggregation import stream_params
from transforms.kinesis.failures import classify_exception

_LOGGER = logging.getLogger(__name__)

_USER_AGENT_EXTRA = "segment-events-kinesis-sink"


def kinesis_client_config(
    region: str | None = None,
    max_pool_connections: int = 16,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
) -> Config:
    """The botocore Config of the sink's client.

    ``parameter_validation`` is off because validating 500-entry requests on the client
    costs noticeable CPU under the GIL; the sink builds the requests itself and Kinesis
    still validates them.
    """
    return Config(
        region_name=region,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        parameter_validation=False,
        tcp_keepalive=True,
        user_agent_extra=_USER_AGENT_EXTRA,
    )


def _assume_role_session(
    base: boto3.session.Session, role_arn: str, session_name: str, config: Config
) -> boto3.session.Session:
    """A session whose credentials are ``role_arn``'s, refreshed through STS as they expire."""
    source = base.get_credentials()
    if source is None:
        raise ValueError(f"no AWS credentials found to assume role {role_arn}")
    sts_config = Config(
        connect_timeout=config.connect_timeout,
        read_timeout=config.read_timeout,
        retries={"total_max_attempts": 3, "mode": "standard"},
    )

    def create_sts(service_name: str, **kwargs: Any) -> Any:
        kwargs.setdefault("config", sts_config)
        return base.client(service_name, **kwargs)

    fetcher = AssumeRoleCredentialFetcher(
        client_creator=create_sts,
        source_credentials=source,
        role_arn=role_arn,
        extra_args={"RoleSessionName": session_name},
    )
    credentials = DeferredRefreshableCredentials(
        refresh_using=fetcher.fetch_credentials, method="assume-role"
    )
    core = botocore.session.Session()
    # botocore has no public setter for refreshable credentials; this is the documented
    # pattern used by boto3's own assume-role providers.
    core._credentials = credentials  # noqa: SLF001
    if base.region_name:
        core.set_config_variable("region", base.region_name)
    return boto3.session.Session(botocore_session=core)


def make_kinesis_client(
    region: str | None = None,
    endpoint_url: str | None = None,
    role_arn: str | None = None,
    max_pool_connections: int = 16,
    connect_timeout: float = 5.0,
    read_timeout: float = 30.0,
    session_name: str = "segment-events-kinesis-sink",
) -> Any:
    """Builds a boto3 ``kinesis`` client for the sink.

    Args:
        region: AWS region; None uses the default chain (``AWS_REGION``, profile...).
        endpoint_url: a Kinesis-compatible endpoint (e.g. a local kinesalite).
        role_arn: optional IAM role to assume through STS.
        max_pool_connections: HTTP connection pool size (>= concurrent requests).
        connect_timeout: seconds to connect.
        read_timeout: seconds to wait for a response.
        session_name: the AssumeRole session name (visible in CloudTrail).

    Returns:
        A thread-safe boto3 Kinesis client.
    """
    config = kinesis_client_config(region, max_pool_connections, connect_timeout, read_timeout)
    session = boto3.session.Session(region_name=region)
    if role_arn:
        session = _assume_role_session(session, role_arn, session_name, config)
        _LOGGER.info("Kinesis sink assumes role %s", role_arn)
    return session.client("kinesis", endpoint_url=endpoint_url, config=config)


class StreamCheckError(SegmentEventsError, RuntimeError):
    """The stream cannot be written: missing, not active, or not visible to the caller."""


_WRITABLE_STATUSES = ("ACTIVE", "UPDATING")


def check_stream(client: Any, stream: str) -> None:
    """Checks, before any work, that ``stream`` exists, is active and can be described.

    One ``DescribeStreamSummary`` call (IAM ``kinesis:DescribeStreamSummary``): a wrong
    stream name, region, endpoint or credential then fails in seconds, not after hours
    of computing. Writing is still proven only by the first ``PutRecords``.

    Raises:
        StreamCheckError: With one line saying what is wrong.
    """
    endpoint = getattr(getattr(client, "meta", None), "endpoint_url", None)
    where = f"at {endpoint}" if endpoint else "in its region"
    try:
        summary = client.describe_stream_summary(**stream_params(stream))[
            "StreamDescriptionSummary"
        ]
    except Exception as exc:  # noqa: BLE001 - classified below into one line
        failure = classify_exception(exc)
        if failure.code == "ResourceNotFoundException":
            raise StreamCheckError(
                f"Kinesis stream '{stream}' does not exist {where} (check --kinesis_stream, "
                "--kinesis_region and --kinesis_endpoint_url)"
            ) from None
        if failure.unreachable:
            raise StreamCheckError(
                f"Kinesis stream '{stream}': cannot reach the endpoint {endpoint or where}: "
                f"{failure.describe()}"
            ) from None
        raise StreamCheckError(
            f"Kinesis stream '{stream}' {where}: cannot describe it with these credentials "
            f"({failure.describe()})"
        ) from None
    status = summary.get("StreamStatus")
    if status == "DELETING":
        raise StreamCheckError(f"Kinesis stream '{stream}' {where} is being deleted")
    if status not in _WRITABLE_STATUSES:
        raise StreamCheckError(f"Kinesis stream '{stream}' {where} is {status}, not ACTIVE")
    mode = (summary.get("StreamModeDetails") or {}).get("StreamMode")
    if mode == "ON_DEMAND":
        # Such a stream reshards by itself; the sink re-sends any aggregate that lands in
        # a shard whose range does not hold all its records (docs/sink.md, Resharding).
        _LOGGER.info("Kinesis stream %s is on-demand (it reshards by itself)", stream)
