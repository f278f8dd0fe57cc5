"""`tickcast loadtest`: drive a running tickcast end to end and report what it holds.

It produces ticks to the ticks topic for S symbols at a target rate (or a ramp of rates),
while M websocket clients, spread over a few worker processes, follow chosen subsets of the
symbols on the feed. For every forecast a client receives it records the latency from its
tick's produce time (the Kafka timestamp the producer stamped, carried in the forecast as
`tick_time`) to its arrival. Everything runs against addresses given as arguments, so it
targets any tickcast, and everything is bounded: by the plan's duration, a tick budget and
a drain deadline.

Three modules: `accounting` (the plan and the per-client books, how loss is counted:
pure, tested without sockets), `runner` (the producer, the client worker processes,
`run`/`main`: a thin shell) and `report` (figures, table, plots, JSON, the server-side
breakdown). This package re-exports what the CLI, the benchmarks and the tests use; it may
import only its own modules.
"""

from streamer.tools.loadtest.accounting import (
    ClientBook,
    Plan,
    parse_ramp,
    step_stats,
    sustained,
    target_ticks,
)
from streamer.tools.loadtest.report import (
    breakdown,
    build_report,
    format_report,
    plot,
    quantile_between,
    scrape_histograms,
    write_json,
)
from streamer.tools.loadtest.runner import client_worker, main, produce, run

__all__ = [
    "ClientBook",
    "Plan",
    "breakdown",
    "build_report",
    "client_worker",
    "format_report",
    "main",
    "parse_ramp",
    "plot",
    "produce",
    "quantile_between",
    "run",
    "scrape_histograms",
    "step_stats",
    "sustained",
    "target_ticks",
    "write_json",
]
