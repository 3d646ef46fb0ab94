"""Split batch backfills (``--snapshots_per_run N``): one pipeline run per N snapshots.

A batch run groups every profile's whole history, and the local runner holds that
shuffle in memory, so one run over months of snapshots needs memory for all of them. A
split backfill runs the job once per group of N consecutive snapshots, in time order.
Each run writes the state every profile ends with (:mod:`transforms.segments.carried_state`) and
the next run starts from it, so the events are exactly those of one run over all the
snapshots (``tests/test_memberships.py`` proves the replay part for random histories,
``tests/test_split_backfill.py`` the job) while each run holds only N snapshots and the
profiles' states.

Timeline of a backfill of 5 daily snapshots with ``--snapshots_per_run 2``::

    run 1: snapshots D1 D2        -> events of D1, D2;  states as of D2 -> for-run-00002
    run 2: snapshots D3 D4 + D2's -> events of D3, D4;  states as of D4 -> for-run-00003
    run 3: snapshot  D5    + D4's -> events of D5

What differs from one run: the mass-exit guard (docs/contract.md §7) judges each run before that
run sends anything, but runs that passed have been sent when a later one fails; the
error says which run failed and which were completed. Rerunning the whole backfill then
re-sends those events with the same ``eventId`` (at-least-once, like any rerun).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import uuid
from collections import defaultdict
from collections.abc import Callable

from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions

from pipeline.graph import JobSettings
from transforms.config import ActivationConfig
from transforms.errors import SegmentEventsError
from transforms.events.timestamps import format_timestamp
from transforms.snapshots.read import SnapshotFile, run_files
from transforms.snapshots.snapshot_time import require_snapshot_time

_LOGGER = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunPlan:
    """One run of a split backfill.

    Attributes:
        number: 1-based position in the backfill.
        files: Its input and baseline files.
        first_ms: Its first snapshot time.
        last_ms: Its last snapshot time.
    """

    number: int
    files: tuple[SnapshotFile, ...]
    first_ms: int
    last_ms: int


class BackfillRunError(SegmentEventsError, RuntimeError):
    """One run of a split backfill failed; the message says which and what was done."""


def plan_runs(settings: JobSettings) -> list[RunPlan]:
    """Groups the matched files into runs of ``snapshots_per_run`` consecutive snapshots.

    Args:
        settings: Validated batch settings with ``snapshots_per_run`` set and snapshot
            times in the file paths.

    Returns:
        The runs in time order (one run when there are few enough snapshots).
    """
    files = run_files(settings.inputs, settings.baseline, None)
    by_time: dict[int, list[SnapshotFile]] = defaultdict(list)
    for snapshot_file in files:
        by_time[require_snapshot_time(snapshot_file.path)].append(snapshot_file)
    times = sorted(by_time)
    size = settings.snapshots_per_run or len(times)
    plans = []
    for start in range(0, len(times), size):
        chunk = times[start : start + size]
        plans.append(
            RunPlan(
                number=len(plans) + 1,
                files=tuple(f for t in chunk for f in by_time[t]),
                first_ms=chunk[0],
                last_ms=chunk[-1],
            )
        )
    return plans


def run_split_backfill(
    settings: JobSettings,
    config: ActivationConfig,
    options: PipelineOptions,
    run_one: Callable[[JobSettings, ActivationConfig, PipelineOptions], dict[str, int]],
) -> dict[str, int]:
    """Runs the job once per run of :func:`plan_runs`, carrying states between runs.

    Output and dead-letter files of run N get ``-runNNN`` after their prefix. The
    carried states live in a private directory (under ``--temp_location`` when given,
    else the local temp directory) that is removed at the end, also after a failure.

    Args:
        settings: Validated batch settings with ``snapshots_per_run`` set.
        config: The activation config.
        options: The Beam options, the same for every run.
        run_one: Builds and runs one pipeline; returns its counters.

    Returns:
        The counters of all runs, summed.

    Raises:
        BackfillRunError: A run failed; earlier runs were completed.
    """
    plans = plan_runs(settings)
    if len(plans) == 1:
        return run_one(dataclasses.replace(settings, files=plans[0].files), config, options)
    state_dir = _make_state_dir(options)
    totals: dict[str, int] = {}
    try:
        for index, plan in enumerate(plans):
            following = plans[index + 1] if index + 1 < len(plans) else None
            run_settings = dataclasses.replace(
                settings,
                files=plan.files,
                seed_state_pattern=(
                    _state_prefix(state_dir, plan.number) + "-*" if index > 0 else None
                ),
                state_output_prefix=(
                    _state_prefix(state_dir, following.number) if following else None
                ),
                output_path=_run_path(settings.output_path, plan.number),
                dead_letter_path=_run_path(settings.dead_letter_path, plan.number),
            )
            _LOGGER.info(
                "backfill run %d of %d: snapshots %s to %s (%d files)",
                plan.number,
                len(plans),
                format_timestamp(plan.first_ms),
                format_timestamp(plan.last_ms),
                len(plan.files),
            )
            try:
                counters = run_one(run_settings, config, options)
            except Exception as err:
                done = {0: "no run was completed", 1: "run 1 was completed and sent"}.get(
                    index, f"runs 1 to {index} were completed and sent"
                )
                raise BackfillRunError(
                    f"backfill run {plan.number} of {len(plans)} (snapshots "
                    f"{format_timestamp(plan.first_ms)} to {format_timestamp(plan.last_ms)}) "
                    f"failed ({done}): {err}"
                ) from err
            for name, value in counters.items():
                totals[name] = totals.get(name, 0) + value
    except BaseException:
        _remove_state_dir(state_dir, failing=True)
        raise
    _remove_state_dir(state_dir)
    return totals


def _run_path(prefix: str | None, number: int) -> str | None:
    return None if prefix is None else f"{prefix}-run{number:03d}"


def _state_prefix(state_dir: str, number: int) -> str:
    return FileSystems.join(state_dir, f"for-run-{number:05d}")


def _make_state_dir(options: PipelineOptions) -> str:
    temp_location = options.view_as(GoogleCloudOptions).temp_location
    if temp_location:
        # Workers of a remote runner must reach the states: a shared location.
        return FileSystems.join(temp_location, f"segment-events-carried-{uuid.uuid4().hex}")
    return tempfile.mkdtemp(prefix="segment-events-carried-")


def _remove_state_dir(state_dir: str, failing: bool = False) -> None:
    """Removes the carried states (profile keys and identities: PII).

    Raises:
        BackfillRunError: They could not be removed (unless the backfill is already
            failing, whose error must not be masked: then it is logged at ERROR).
    """
    try:
        if os.path.isdir(state_dir):
            shutil.rmtree(state_dir)
            return
        matched = FileSystems.match([FileSystems.join(state_dir, "*")])[0].metadata_list
        if matched:
            FileSystems.delete([m.path for m in matched])
    except Exception as err:  # noqa: BLE001 - filesystems raise many kinds
        message = (
            f"could not remove the carried states under {state_dir} (they hold profile "
            f"keys and identities): {err}; remove them by hand"
        )
        if failing:
            _LOGGER.error("%s", message)
            return
        raise BackfillRunError(message) from None
