"""`python -m streamer.cli`: the `tickcast` command line."""

from streamer.cli.main import main

raise SystemExit(main())
