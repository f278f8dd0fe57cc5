"""tickcast's streaming half: Kafka in, forecasts out (see docs/architecture.md).

Sub-packages by role: `core` (pure), `serve` (the Kafka processor and its service), `feed`
(websocket fan-out), `kafka` (helpers and the local broker), `jobs` (retrain, replay, run),
`tools` (watch, loadtest) and `cli`. Ground floor, importable from all: `settings`,
`metrics`, `lifecycle`.
"""
