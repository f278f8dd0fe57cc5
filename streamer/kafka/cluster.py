"""Several local brokers, and the one detached broker of ``tickcast kafka up|down|status``.

- :class:`LocalCluster`: n combined KRaft nodes with a static quorum, replication factor 3.
- :func:`up`, :func:`down`, :func:`status`: a single-node broker that outlives the command,
  found again through the pid file in its data dir. The command line itself is in
  :mod:`streamer.cli.stream_commands`.

A dev/test tool. May import :mod:`streamer.kafka.local`, :mod:`streamer.kafka.jars`,
:mod:`streamer.kafka.probe` and the standard library.
"""

from __future__ import annotations

import contextlib
import os
import struct
import threading
from pathlib import Path
from typing import Any

from streamer.kafka.jars import KAFKA_VERSION, ensure_jars
from streamer.kafka.local import (
    HOST,
    PID_FILE,
    LocalBroker,
    free_port,
    new_cluster_id,
    recorded_pid,
    recorded_port,
)
from streamer.kafka.probe import metadata_brokers

__all__ = ["LocalCluster", "default_data_dir", "down", "status", "up"]


class LocalCluster:
    """``n`` combined KRaft nodes on 127.0.0.1 with a static controller quorum (every node a
    voter). Internal topics and new topics default to replication factor 3, min.insync.replicas
    2, so a 3-node cluster keeps serving acks=all producers with one node down."""

    def __init__(
        self,
        base_dir: Path,
        n: int = 3,
        heap: str = "384m",
        extra: dict[str, str] | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one node")
        base_dir = Path(base_dir)
        ports = [(free_port(), free_port()) for _ in range(n)]
        quorum = ",".join(f"{i + 1}@{HOST}:{c}" for i, (_, c) in enumerate(ports))
        cid = new_cluster_id()
        self.nodes = [
            LocalBroker(
                base_dir / f"node{i + 1}",
                port=p,
                controller_port=c,
                node_id=i + 1,
                heap=heap,
                quorum=quorum,
                extra=extra,
                cluster_id=cid,
            )
            for i, (p, c) in enumerate(ports)
        ]

    @property
    def bootstrap(self) -> str:
        """Every node's ``127.0.0.1:<port>``, comma-joined."""
        return ",".join(node.bootstrap for node in self.nodes)

    def start(self, timeout: float = 90) -> None:
        """Start every node (together: the quorum needs a majority) and wait until each
        serves requests and sees all nodes."""
        self._format_all()
        try:
            for node in self.nodes:
                if not node.running:
                    node.spawn()
            for node in self.nodes:
                node.wait_ready(timeout, expect=len(self.nodes))
        except BaseException:
            self.stop(timeout=5)
            raise

    def _format_all(self) -> None:
        # The formats are independent JVMs: run them side by side.
        todo = [node for node in self.nodes if not node.formatted]
        ensure_jars()  # once, before the threads
        errors: list[BaseException] = []

        def run(node: LocalBroker) -> None:
            try:
                node.format()
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(node,)) for node in todo]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def stop(self, timeout: float = 30) -> None:
        """Stop every node: SIGTERM to all, then wait (SIGKILL past ``timeout``)."""
        for node in self.nodes:
            node.terminate()
        for node in self.nodes:
            node.stop(timeout)

    def stop_node(self, i: int, timeout: float = 30) -> None:
        """Clean shutdown of node ``i`` (0-based)."""
        self.nodes[i].stop(timeout)

    def kill_node(self, i: int) -> None:
        """SIGKILL node ``i`` (0-based)."""
        self.nodes[i].kill()

    def start_node(self, i: int, timeout: float = 60) -> None:
        """Start node ``i`` (0-based) again, on its old ports and data."""
        self.nodes[i].start(timeout)

    def __repr__(self) -> str:
        return f"LocalCluster({self.bootstrap})"


def default_data_dir() -> Path:
    """``$TICKCAST_KAFKA_DATA`` or ``~/.local/state/tickcast/kafka``."""
    env = os.environ.get("TICKCAST_KAFKA_DATA")
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tickcast" / "kafka"


def status(data_dir: Path | None = None) -> dict[str, Any]:
    """What runs from ``data_dir``: running, pid, bootstrap, ready (answers requests)."""
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    pid = recorded_pid(data_dir)
    port = recorded_port(data_dir)
    ready = False
    if pid is not None and port is not None:
        with contextlib.suppress(OSError, struct.error):
            ready = bool(metadata_brokers(port, timeout=1.0))
    return {
        "running": pid is not None,
        "ready": ready,
        "pid": pid,
        "bootstrap": f"{HOST}:{port}" if port is not None else None,
        "data_dir": str(data_dir),
        "version": KAFKA_VERSION,
    }


def up(port: int = 9092, data_dir: Path | None = None, timeout: float = 60) -> LocalBroker:
    """Start a single-node broker that outlives this process, or return the one already
    running from ``data_dir`` (whatever its port). Its pid is in ``<data_dir>/kafka.pid``."""
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    pid = recorded_pid(data_dir)
    if pid is not None:
        broker = LocalBroker(data_dir, port=recorded_port(data_dir) or port)
        broker.adopt(pid)
        return broker
    broker = LocalBroker(data_dir, port=port)
    broker.spawn(detach=True)
    broker.wait_ready(timeout)
    return broker


def down(data_dir: Path | None = None, timeout: float = 30) -> bool:
    """Stop the broker recorded in ``data_dir`` (that pid only, and only if it is this data
    dir's ``kafka.Kafka`` JVM). False if none was running."""
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    pid = recorded_pid(data_dir)
    if pid is None:
        (data_dir / PID_FILE).unlink(missing_ok=True)
        return False
    broker = LocalBroker(data_dir)
    broker.adopt(pid)
    broker.stop(timeout)
    return True
