"""The Beam internals the job relies on are all present in the installed Beam.

Every use of a private Beam API sits in ``transforms/beam_internals.py``; this test
names what a Beam upgrade moved or removed, before any pipeline fails obscurely.
"""

from __future__ import annotations

import apache_beam

from transforms import beam_internals


def test_every_beam_internal_the_job_uses_is_present():
    missing = beam_internals.missing_internals()
    assert not missing, (
        f"Apache Beam {apache_beam.__version__} lacks internals the job uses: "
        f"{', '.join(missing)}; adapt transforms/beam_internals.py"
    )


def test_the_check_reports_a_removed_internal(monkeypatch):
    # The check can fail: take one internal away and it is named.
    from apache_beam.runners.direct.transform_evaluator import TransformEvaluatorRegistry

    monkeypatch.delattr(TransformEvaluatorRegistry, "_test_evaluators_overrides")
    assert beam_internals.missing_internals() == [
        "TransformEvaluatorRegistry._test_evaluators_overrides"
    ]


def test_private_beam_apis_are_used_only_in_the_internals_module():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1]
    private = re.compile(
        r"apache_beam\.runners\.(direct|portability)|\._applied_ptransform\b|"
        r"_test_evaluators_overrides|__subclasses__\(\)|_TransformEvaluator\b"
    )
    offenders = [
        f"{path.relative_to(root)}:{number}"
        for folder in ("pipeline", "transforms")
        for path in sorted((root / folder).rglob("*.py"))
        if path.name != "beam_internals.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if private.search(line) and not line.lstrip().startswith(("#", "(``", "*"))
    ]
    assert offenders == []
