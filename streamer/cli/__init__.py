"""The `tickcast` command line: `main` parses and dispatches; each command group lives in its
own module. May import every other sub-package (it is the top of the tree)."""

from streamer.cli.main import main

__all__ = ["main"]
