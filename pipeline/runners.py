"""The local runner: Beam's DirectRunner choice of engine, without Prism.

Beam 2.77's ``DirectRunner`` first tries the Prism runner, whose Go binary is
downloaded from the internet at run time. On a closed network that download fails
(or, behind a silent firewall, stalls) before Beam falls back to its Python engines.
The job must not depend on anything downloaded at run time (docs/contract.md §9), so the default
runner here makes the same choice Beam makes after Prism, directly:

* the FnApiRunner (fast, batch) for every pipeline it supports;
* the BundleBasedDirectRunner for what it does not support: ``TestStream``,
  processing-time timers, and streaming (``--streaming``): the FnApiRunner runs a
  pipeline stage by stage and hands a stage's output on only once the stage finished,
  so a watch that runs for hours would deliver nothing before it stops. For streaming,
  the watch of new snapshots is swapped for a root transform of that runner (see
  :func:`transforms.snapshots.watch_direct.direct_runner_overrides`).
"""

from __future__ import annotations

import logging

from apache_beam.options.pipeline_options import StandardOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.runner import PipelineRunner
from apache_beam.testing.test_stream import TestStream
from apache_beam.transforms import userstate
from apache_beam.transforms.core import ParDo
from apache_beam.transforms.timeutil import TimeDomain

from transforms.beam_internals import BundleBasedDirectRunner, run_on_fn_api_runner
from transforms.snapshots.watch import direct_runner_overrides

_LOGGER = logging.getLogger(__name__)
LOCAL_RUNNER_NAMES = (None, "DirectRunner", "SwitchingDirectRunner")


class OfflineDirectRunner(PipelineRunner):
    """Runs a pipeline locally on the FnApiRunner, or the BundleBasedDirectRunner."""

    def run_pipeline(self, pipeline, options):
        if options.view_as(StandardOptions).streaming or _needs_bundle_based_runner(pipeline):
            _LOGGER.info("Running on the BundleBasedDirectRunner (streaming)")
            pipeline.replace_all(direct_runner_overrides())
            return BundleBasedDirectRunner().run_pipeline(pipeline, options)
        _LOGGER.info("Running on the FnApiRunner")
        return run_on_fn_api_runner(pipeline, options)


def _needs_bundle_based_runner(pipeline) -> bool:
    visitor = _FeatureVisitor()
    pipeline.visit(visitor)
    return visitor.needs_bundle_based


class _FeatureVisitor(PipelineVisitor):
    """Finds the features only the BundleBasedDirectRunner executes."""

    def __init__(self) -> None:
        self.needs_bundle_based = False

    def visit_transform(self, applied_ptransform) -> None:
        transform = applied_ptransform.transform
        if isinstance(transform, TestStream):
            self.needs_bundle_based = True
        if isinstance(transform, ParDo) and userstate.is_stateful_dofn(transform.dofn):
            _, timer_specs = userstate.get_dofn_specs(transform.dofn)
            if any(t.time_domain == TimeDomain.REAL_TIME for t in timer_specs):
                self.needs_bundle_based = True
