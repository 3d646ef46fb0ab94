"""The Flex Template's Python file (``FLEX_TEMPLATE_PYTHON_PY_FILE``): the job's command line.

The Flex Template launcher runs ``python launch.py --NAME=VALUE ...``: one flag per
template parameter (``metadata.json`` beside this file, named as the flags of
``python -m pipeline``) and the pipeline options of the launch (``--project``,
``--region``, ``--temp_location``, ...). This file turns them into that command line,
builds the job exactly as ``python -m pipeline`` does, and submits it without waiting
for it to end:

* a boolean parameter comes as ``--quiet=true`` or ``--quiet=false``: it becomes
  ``--quiet`` or nothing (the command line's flags take no value);
* a ``--config`` on Cloud Storage is copied to a local file first (the activation config
  is read here, when the job is built);
* the workers run the image named by ``$SEGMENT_EVENTS_WORKER_IMAGE`` (set when the
  launcher image is built) with the Beam SDK it holds: ``--sdk_container_image`` and
  ``--sdk_location=container``, unless the launch gives them; ``--runner`` defaults to
  ``DataflowRunner``.

``--snapshots_per_run`` (several jobs in a row) and ``--report`` (read when the run has
ended) need a submitter that waits for the job: a template launch refuses them (one
``error:`` line, exit 2); run them from a workstation (docs/operations/dataflow.md).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import StandardOptions

from pipeline.arguments import UsageError, parse_args
from pipeline.graph import build_pipeline
from pipeline.main import (
    EXIT_FAILED,
    EXIT_USAGE,
    configure_logging,
    one_line,
    preflight_stream,
)
from pipeline.options import SegmentEventsOptions
from transforms.errors import SegmentEventsError
from transforms.kinesis.client import StreamCheckError

_LOGGER = logging.getLogger(__name__)
WORKER_IMAGE_ENV = "SEGMENT_EVENTS_WORKER_IMAGE"
# The options classes whose flags are the template's parameters (with --streaming).
TEMPLATE_OPTIONS = (SegmentEventsOptions, StandardOptions)


def boolean_flags() -> set[str]:
    """The flags of the template's options classes that take no value (``--quiet``)."""
    parser = argparse.ArgumentParser(add_help=False)
    for cls in TEMPLATE_OPTIONS:
        cls._add_argparse_args(parser)
    return {
        flag for action in parser._actions if action.nargs == 0 for flag in action.option_strings
    }


def template_argv(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The command line of ``python -m pipeline`` for the launcher's arguments.

    Raises:
        UsageError: a boolean parameter is neither ``true`` nor ``false``.
    """
    flags = boolean_flags()
    out: list[str] = []
    for arg in argv:
        name, equals, value = arg.partition("=")
        if equals and name in flags:
            if value.strip().lower() not in ("true", "false"):
                raise UsageError(f"{name} takes true or false, not {value!r}")
            if value.strip().lower() == "true":
                out.append(name)
            continue
        out.append(arg)
    given = {arg.partition("=")[0] for arg in out}
    if "--runner" not in given:
        out.append("--runner=DataflowRunner")
    image = env.get(WORKER_IMAGE_ENV)
    if image and "--sdk_container_image" not in given:
        out.append(f"--sdk_container_image={image}")
        if "--sdk_location" not in given:
            out.append("--sdk_location=container")
    return out


def with_local_config(argv: Sequence[str], folder: str) -> list[str]:
    """``argv`` with a ``--config`` URL (``gs://...``) replaced by a local copy in ``folder``."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith("--config="):
            index, prefix, value = i, "--config=", arg.partition("=")[2]
        elif arg == "--config" and i + 1 < len(out):
            index, prefix, value = i + 1, "", out[i + 1]
        else:
            continue
        if "://" in value:
            out[index] = prefix + _copy_config(value, folder)
    return out


def _copy_config(url: str, folder: str) -> str:
    local = os.path.join(folder, "activation.json")
    try:
        with FileSystems.open(url) as source, open(local, "wb") as target:
            target.write(source.read())
    except Exception as err:  # noqa: BLE001 - any filesystem failure is one line
        raise UsageError(f"--config {url} cannot be read: {one_line(err)}") from None
    return local


def build(argv: Sequence[str], env: Mapping[str, str]) -> beam.Pipeline:
    """Checks the launch's arguments and builds the job (not run).

    Raises:
        StreamCheckError: the stream cannot be written (unless ``--skip_stream_check``).
        SegmentEventsError: the arguments are wrong (``UsageError``, ``ConfigError``,
            ``InputError``, ``SnapshotTimeError``: transforms/errors.py).
    """
    with tempfile.TemporaryDirectory(prefix="segment-events-template-") as folder:
        settings, config, options = parse_args(with_local_config(template_argv(argv, env), folder))
    if settings.snapshots_per_run:
        raise UsageError("--snapshots_per_run runs several jobs: not from a template")
    if settings.report_path:
        raise UsageError("--report is written when the run ends: not from a template")
    if settings.kinesis_stream and not options.view_as(SegmentEventsOptions).skip_stream_check:
        preflight_stream(settings)
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, settings, config)
    return pipeline


def main(argv: Sequence[str] | None = None) -> int:
    """Builds and submits the job; returns the exit code (0 submitted, 2 refused, 1 failed)."""
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    try:
        pipeline = build(list(sys.argv[1:] if argv is None else argv), os.environ)
    except StreamCheckError as err:
        print(f"error: {err}; nothing was run", file=sys.stderr)
        return EXIT_USAGE
    except SegmentEventsError as err:  # found before anything was submitted
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        pipeline.run()
    except Exception as err:  # noqa: BLE001 - one line; the text may quote input
        _LOGGER.debug("submission failed", exc_info=True)
        print(f"error: the job could not be submitted: {one_line(err)}", file=sys.stderr)
        return EXIT_FAILED
    _LOGGER.info("job submitted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
