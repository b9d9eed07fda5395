"""The ``tensorflow_model_server`` command: TF Serving's command line, served by tfmux.

Also ``tfmux tf-serving --flag=value ...``. A flag tfmux cannot honour stops it before anything
starts, with a message naming the flag (exit status 1); flags accepted without effect are
printed as notes when the server is ready.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

from tfmux import __version__
from tfmux.tfs_flags import FlagError, parse_flags, usage
from tfmux.tfs_invocation import Invocation, invocation


def build(argv: Sequence[str], environ: Mapping[str, str]) -> Invocation:
    """The invocation a TF Serving command line asks for (FlagError if it cannot be served)."""
    return invocation(parse_flags(list(argv)), environ)


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help", "--helpfull") for arg in args):
        print(usage())
        return
    try:
        values = parse_flags(args)
        if values.get("version"):
            print(f"TensorFlow ModelServer: tfmux {__version__}")
            return
        served = invocation(values, os.environ)
    except FlagError as exc:
        print(f"tensorflow_model_server: error: {exc}", file=sys.stderr)
        sys.exit(1)
    from tfmux.cli import run_server

    try:
        run_server(served.config, served.notes)
    finally:
        served.close()


if __name__ == "__main__":
    main()
