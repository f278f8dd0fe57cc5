"""The websocket fan-out: the in-process `hub` the processor publishes to, the sans-I/O
`protocol` and per-client `outbox`, the websockets `server` and the dashboard's `static/`
files.

`hub`, `outbox` and `protocol` are pure and synchronous; only `server` does I/O. May import
`streamer.core`, `streamer.metrics` and `streamer.settings`; never `streamer.serve`,
`streamer.kafka` or `model`.
"""
