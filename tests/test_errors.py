"""The one error family (transforms/errors.py): every exception class of the job is in
it, keeps its standard base, and is listed in the module's taxonomy."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import pipeline
import transforms
from transforms import errors
from transforms.errors import SegmentEventsError


def job_exception_classes() -> dict[str, type]:
    """Every exception class defined in a module of ``pipeline/`` or ``transforms/``."""
    found = {}
    for package in (pipeline, transforms):
        for module_info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if module_info.name.endswith(".__main__"):
                continue  # runs the command line when imported
            module = importlib.import_module(module_info.name)
            for name, value in vars(module).items():
                if (
                    inspect.isclass(value)
                    and issubclass(value, BaseException)
                    and value.__module__ == module.__name__
                ):
                    found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_class_is_in_the_family_and_listed():
    classes = job_exception_classes()
    assert len(classes) >= 17, sorted(classes)
    listed = errors.__doc__ or ""
    for qualified, cls in classes.items():
        if cls is SegmentEventsError:
            continue
        assert issubclass(cls, SegmentEventsError), qualified
        module, name = qualified.rsplit(".", 1)
        assert f"``{name}`` ({module})" in listed, qualified


@pytest.mark.parametrize(
    ("qualified", "standard_base"),
    [
        ("pipeline.arguments.UsageError", ValueError),
        ("pipeline.replay_command.ReplayUsageError", ValueError),
        ("pipeline.backfill.BackfillRunError", RuntimeError),
        ("transforms.config.ConfigError", ValueError),
        ("transforms.snapshots.read.InputError", ValueError),
        ("transforms.snapshots.read.InputFileError", ValueError),
        ("transforms.snapshots.snapshot_time.SnapshotTimeError", ValueError),
        ("transforms.snapshots.profiles.RecordError", ValueError),
        ("transforms.events.timestamps.TimestampError", ValueError),
        ("transforms.events.format.EventFormatError", ValueError),
        ("transforms.segments.guard.MassExitError", ValueError),
        ("transforms.segments.guard.BadRecordsError", ValueError),
        ("transforms.kinesis.client.StreamCheckError", RuntimeError),
        ("transforms.kinesis.failures.KinesisSinkError", RuntimeError),
        ("transforms.kinesis.dead_letter_files.DeadLetterFileError", ValueError),
    ],
)
def test_each_error_keeps_its_standard_base(qualified, standard_base):
    cls = job_exception_classes()[qualified]
    # Existing ``except ValueError`` / ``except RuntimeError`` clauses still catch it.
    assert issubclass(cls, standard_base) and issubclass(cls, SegmentEventsError)


def test_the_sink_error_is_the_one_of_its_failures_module():
    from transforms.kinesis import failures as kinesis_failures
    from transforms.kinesis import settings, sink

    assert sink.KinesisSinkError is kinesis_failures.KinesisSinkError
    assert not hasattr(settings, "KinesisSinkError")
