"""The processes besides `serve`: the retrain job and its registry operations, the replay
of series as ticks, and `tickcast run` (everything on a local broker).

May import `model`, `streamer.core`, `streamer.kafka`, the ground-floor modules
(`settings`, `metrics`, `loop`, `timefmt`) and, for `run_local` only, `streamer.serve` and
`streamer.feed`; never `streamer.cli` or `streamer.tools`.
"""
