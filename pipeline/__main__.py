"""``python -m pipeline``: see :mod:`pipeline.main`."""

import logging
import sys


class _DropKnownBeamNoise(logging.Filter):
    """Drops Beam warnings that say nothing to this job's users.

    Importing Beam without its GCP extras warns about apitools, and a text sink with
    ``skip_if_empty`` warns when it had nothing to write (no dead letters: good news).
    """

    _NOISE = ("apitools not found", "No shards found to finalize")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(noise in message for noise in self._NOISE)


# Configured before Beam is imported, so its import-time warnings go through the filter.
logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
for _handler in logging.getLogger().handlers:
    _handler.addFilter(_DropKnownBeamNoise())

if sys.argv[1:2] == ["replay"]:  # python -m pipeline replay ...: see pipeline/replay_command.py
    from pipeline.replay_command import main as replay_main  # noqa: E402

    sys.exit(replay_main(sys.argv[2:]))

from pipeline.main import main  # noqa: E402 - after the logging set-up, on purpose

sys.exit(main())
