"""The `tickcast` command: `build_parser` asks each command group to register its
subcommands, `main` parses, dispatches and turns the errors a user can fix into exit 2.

tickcast run                      the main job on its embedded default: local broker, replay
                                  of bundled real data, serve, websocket feed and dashboard
tickcast watch SYM...             print live forecasts from the websocket feed
tickcast loadtest                 drive a running tickcast, report throughput and latency
tickcast report                   evaluate every bundled model on its data (tables + plots)
tickcast train --data D --out M   fit a model on a bundled data set or a CSV
tickcast evaluate --data D [--model M] [--json] [--plot out.png]
tickcast datasets                 list the bundled real series
tickcast bundle                   retrain the models that ship with tickcast
tickcast kafka up|down|status     a local Apache Kafka broker (KRaft) on 127.0.0.1
tickcast serve                    the stream engine: ticks in, forecasts out (Kafka)
tickcast replay --data D          publish a series as ticks (--synthetic S: random walks)
tickcast retrain [--since 2h]     fine-tune the registry's champion on recent ticks, promote
                                  the challenger if it wins by --margin (--every 30m: loop)
tickcast models list|promote V|rollback   the model registry's versions and champion

Stream settings come from flags or TICKCAST_* environment variables (`--help` of each).

May import the command-group modules of `streamer.cli` and, lazily, the error types of
`model`; nothing else (the groups import what their commands run).
"""

from __future__ import annotations

import argparse
import sys

from streamer.cli import model_commands, registry_commands, stream_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The `tickcast` parser: every command group's subcommands."""
    parser = argparse.ArgumentParser(
        prog="tickcast",
        description="Streaming real-time price forecaster: a stateful Flax LSTM per symbol.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (stream_commands, model_commands, registry_commands):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:  # flag defaults come from TICKCAST_* variables: a bad one is an error, no traceback
        parser = build_parser()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)
    from model.data import DataError
    from model.errors import CheckpointError

    try:
        return int(args.func(args))
    except (DataError, CheckpointError, ValueError, FileExistsError) as e:  # say what, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a port in use, a file that cannot be read or written
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:
        from aiokafka.errors import KafkaConnectionError

        if not isinstance(e, KafkaConnectionError):
            raise
        where = getattr(args, "kafka_bootstrap", "the broker")
        print(f"error: cannot reach Kafka at {where} ({e}); a local one for trying things: "
              "tickcast kafka up", file=sys.stderr)  # fmt: skip
        return 1


if __name__ == "__main__":
    sys.exit(main())
