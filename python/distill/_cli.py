"""The ``distill`` command installed with the package: the Rust command line, in-process."""

from __future__ import annotations

import os
import shutil
import signal
import sys

from . import _distill


def main() -> None:
    # Ctrl-C ends the command as it ends the binary (a training run installs its own handler to
    # stop cleanly); Python's handler would only set a flag the Rust code never reads.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # `distill eval` measures each model in a child `distill __measure` process: this script.
    exe = shutil.which(sys.argv[0]) or os.path.abspath(sys.argv[0])
    os.environ.setdefault("DISTILL_EXE", exe)
    sys.exit(_distill.cli_main(["distill", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
