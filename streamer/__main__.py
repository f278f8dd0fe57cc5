"""`python -m streamer`: the `tickcast` command line."""

from streamer.cli import main

raise SystemExit(main())
