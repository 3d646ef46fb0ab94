"""Developer tooling that is not the job: local servers, engines, sample data.

Never installed with the package (``setup.py`` packages only ``pipeline`` and
``transforms``); used by ``run_local.sh``, the tests and the benchmarks from a checkout.
"""
