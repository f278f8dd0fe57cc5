"""Clients of a running tickcast: `watch` (the feed's reference client) and `loadtest`
(ticks in, websocket clients out, a capacity report).

They talk to an instance only through its addresses (Kafka, the feed, `/metrics`). May
import `streamer.core.ticks`, the ground-floor modules (`settings`, `loop`) and their own
modules; never `model` (no JAX), `streamer.serve`, `streamer.jobs` or `streamer.cli`.
"""
