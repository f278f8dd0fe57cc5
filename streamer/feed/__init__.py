"""The websocket fan-out: the in-process hub the processor publishes to (`hub`), the feed's
sans-I/O protocol and per-client state (`protocol`, `outbox`), the websockets server that
drives them (`server`), and the dashboard's static files (`static/`).

May import `core` (the forecast wire format), `metrics` and `settings`; never `serve` or
`kafka`: the processor hands it forecasts through the hub.
"""
