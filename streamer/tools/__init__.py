"""Clients of a running instance: `tickcast watch` (the feed protocol's reference client) and
`tickcast loadtest`. They speak to tickcast over its public interfaces (Kafka topics, the
websocket feed, /metrics) only, import no JAX, and may import `core`, `kafka` and
`settings`.
"""
