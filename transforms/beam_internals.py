"""Every use of Apache Beam's private or undocumented APIs, in one place.

The job needs a few of Beam's internals that no public API offers. Each is reached
only through this module, and ``tests/test_beam_internals.py`` checks all of them
against the installed Beam, so an upgrade that moves or removes one fails there, with
the name of what is missing, instead of somewhere inside a run.

* The local runner (``pipeline/runners.py``) picks Beam's Python engines itself, to
  avoid the DirectRunner's run-time download of Prism: the ``BundleBasedDirectRunner``,
  and the ``FnApiRunner`` with a provision info that carries the pipeline options.
* The watch of a landing folder on that runner is a root transform with its own
  evaluator, registered in the runner's evaluator-override table (the hook Beam's own
  tests use), reading its transform from the evaluator's ``_applied_ptransform``.
* The unknown-flag check lists every ``PipelineOptions`` subclass
  (``__subclasses__``): Beam has no registry of its options classes.
* The command line drops the traceback Beam logs (logger ``apache_beam.runners.common``)
  when a step fails, and strips the ``[while running '...']`` suffix Beam adds to a
  worker exception's message: both are Beam's log and message formats, not an API.
"""

from __future__ import annotations

import re
from typing import Any

from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner
from apache_beam.runners.direct.transform_evaluator import (
    TransformEvaluatorRegistry,
    _TransformEvaluator,
)
from apache_beam.runners.direct.util import TransformResult

__all__ = [
    "BEAM_STEP_FAILURE_LOGGER",
    "BundleBasedDirectRunner",
    "STEP_ANNOTATION",
    "TransformEvaluator",
    "TransformResult",
    "all_options_classes",
    "applied_transform",
    "missing_internals",
    "register_direct_evaluator",
    "run_on_fn_api_runner",
]

# The DirectRunner's base class of transform evaluators.
TransformEvaluator = _TransformEvaluator

# The logger that logs a failing step's traceback, and the suffix Beam adds to a worker
# exception's message.
BEAM_STEP_FAILURE_LOGGER = "apache_beam.runners.common"
STEP_ANNOTATION = re.compile(r"\s*\[while running '[^\]]*'\]")


def register_direct_evaluator(transform_class: type, evaluator_class: type) -> None:
    """Makes the BundleBasedDirectRunner evaluate ``transform_class`` with an evaluator.

    Keyed by the job's own transform class, so no other transform's execution changes.
    """
    TransformEvaluatorRegistry._test_evaluators_overrides[transform_class] = evaluator_class


def applied_transform(evaluator: Any) -> Any:
    """The transform an evaluator of the DirectRunner was created for."""
    return evaluator._applied_ptransform.transform


def all_options_classes() -> list[type]:
    """Every imported ``PipelineOptions`` subclass, transitively."""
    seen: list[type] = []
    stack = list(PipelineOptions.__subclasses__())
    while stack:
        cls = stack.pop()
        if cls in seen:
            continue
        seen.append(cls)
        stack.extend(cls.__subclasses__())
    return seen


def run_on_fn_api_runner(pipeline: Any, options: PipelineOptions) -> Any:
    """Runs a pipeline on the FnApiRunner, with the options visible to the SDK harness.

    Without a provision info the FnApiRunner's workers see no pipeline options (what
    the DirectRunner passes when it picks that engine itself).
    """
    # Imported here: the FnApiRunner pulls in the portability stack.
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    provision = fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
    )
    return fn_runner.FnApiRunner(provision_info=provision).run_pipeline(pipeline, options)


def missing_internals() -> list[str]:
    """The internals this module relies on that the installed Beam lacks (empty: all)."""
    import logging

    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners import common
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    checks = {
        "TransformEvaluatorRegistry._test_evaluators_overrides": isinstance(
            getattr(TransformEvaluatorRegistry, "_test_evaluators_overrides", None), dict
        ),
        "_TransformEvaluator.__init__(..., applied_ptransform, ...)": "applied_ptransform"
        in _TransformEvaluator.__init__.__code__.co_varnames,
        "BundleBasedDirectRunner.run_pipeline": hasattr(BundleBasedDirectRunner, "run_pipeline"),
        "fn_runner.ExtendedProvisionInfo": hasattr(fn_runner, "ExtendedProvisionInfo"),
        "fn_runner.FnApiRunner(provision_info=...)": "provision_info"
        in fn_runner.FnApiRunner.__init__.__code__.co_varnames,
        "JobServiceHandle.encode_pipeline_options": hasattr(
            JobServiceHandle, "encode_pipeline_options"
        ),
        "ProvisionInfo.pipeline_options": "pipeline_options"
        in beam_provision_api_pb2.ProvisionInfo.DESCRIPTOR.fields_by_name,
        "PipelineOptions.__subclasses__ finds Beam's options": any(
            cls.__name__ == "StandardOptions" for cls in all_options_classes()
        ),
        f"logger {BEAM_STEP_FAILURE_LOGGER}": common.__name__ == BEAM_STEP_FAILURE_LOGGER
        and isinstance(logging.getLogger(BEAM_STEP_FAILURE_LOGGER), logging.Logger),
        "TransformResult(transform_evaluator, uncommitted_output_bundles, "
        "unprocessed_bundles, counters, keyed_watermark_holds)": TransformResult.__init__.__code__.co_argcount
        >= 6,
    }
    return [name for name, ok in checks.items() if not ok]
