"""Prism, Beam's portable local runner, built from the Go module proxy into ``.cache/``.

``python -m tools.prism`` prints the path of the binary, building it first if needed
(``go install github.com/apache/beam/sdks/v2/go/cmd/prism@vBEAM``: about 2 minutes
cold). The version follows the installed Beam SDK, so runner and SDK match. Pipelines
use it with ``--runner PrismRunner --prism_location PATH``; without a local binary Beam
would download one at run time, which a closed network does not allow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRISM_MODULE = "github.com/apache/beam/sdks/v2/go/cmd/prism"


class PrismBuildError(RuntimeError):
    """``go install`` failed; the message holds its output."""


def beam_version() -> str:
    import apache_beam

    return apache_beam.__version__


def prism_binary(quiet: bool = False) -> Path:
    """The path of a Prism binary matching the installed Beam SDK, built if missing."""
    version = beam_version()
    home = Path(os.environ.get("PRISM_HOME", ROOT / ".cache" / "prism")) / version
    binary = home / "prism"
    if binary.exists():
        return binary
    go = shutil.which("go")
    if go is None:
        raise PrismBuildError("go is needed to build Prism")
    if not quiet:
        print(
            f"==> building Prism v{version} with go install into {home} (about 2 minutes)",
            file=sys.stderr,
            flush=True,
        )
    env = dict(os.environ, GOBIN=str(home), GOFLAGS="-mod=mod")
    result = subprocess.run(
        [go, "install", f"{PRISM_MODULE}@v{version}"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0 or not binary.exists():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise PrismBuildError(f"go install of Prism v{version} failed:\n{tail}")
    return binary


def main() -> int:
    try:
        print(prism_binary())
    except PrismBuildError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
