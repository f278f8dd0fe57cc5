"""A real Apache Kafka broker on 127.0.0.1, for development, tests and benchmarks.

The broker is the pinned Maven artifact ``org.apache.kafka:kafka_2.13`` (see
``deploy/kafka/pom.xml`` and :mod:`streamer.kafka.jars`): each node runs as
``java -cp '<libs>/*' kafka.Kafka server.properties`` in KRaft mode, broker and controller
in one process. No Docker, no download at run time.

- :class:`LocalBroker`: one node (dynamic single-voter quorum, or one voter of a static quorum).
- :class:`~streamer.kafka.cluster.LocalCluster`: n nodes; ``up``, ``down`` and ``status`` of
  ``tickcast kafka`` (a broker that outlives the command) are in :mod:`streamer.kafka.cluster`.

Failures raise :class:`~streamer.kafka.jars.LocalKafkaError`. A dev/test tool, never
imported by the serving path. May import :mod:`streamer.kafka.jars`,
:mod:`streamer.kafka.probe` and the standard library.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import os
import signal
import socket
import struct
import subprocess
import time
import uuid
from pathlib import Path

from streamer.kafka.jars import JVM_FLAGS, LOG4J_CONFIG, LocalKafkaError, ensure_jars, java
from streamer.kafka.probe import HOST, cmdline, metadata_brokers, pid_alive

__all__ = [
    "BASE_SETTINGS",
    "HOST",
    "PID_FILE",
    "LocalBroker",
    "free_port",
    "new_cluster_id",
    "recorded_pid",
    "recorded_port",
    "replication_settings",
]

PID_FILE = "kafka.pid"  # in the data dir: the running JVM's pid
_CONFIG_FILE = "server.properties"
_OUT_FILE = "kafka.out"  # the JVM's own stdout/stderr; the broker log is server.log

# Dev/test broker settings shared by every node; replication settings are added per topology.
BASE_SETTINGS: dict[str, str] = {
    "process.roles": "broker,controller",
    "controller.listener.names": "CONTROLLER",
    "inter.broker.listener.name": "PLAINTEXT",
    "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
    "auto.create.topics.enable": "false",
    "num.partitions": "4",
    "offsets.topic.num.partitions": "4",
    "transaction.state.log.num.partitions": "4",
    "group.initial.rebalance.delay.ms": "0",
    # A node restarted after a crash re-registers only once its old session expired (9 s).
    "broker.session.timeout.ms": "4000",
    "broker.heartbeat.interval.ms": "1000",
    "transaction.abort.timed.out.transaction.cleanup.interval.ms": "5000",
    "log.cleaner.enable": "true",  # tickcast keeps model state in a compacted topic
    "log.cleaner.threads": "1",
    "log.cleaner.dedupe.buffer.size": str(16 * 1024 * 1024),  # default 128 MiB: a third of heap
    "num.recovery.threads.per.data.dir": "1",
    "num.network.threads": "2",
    "num.io.threads": "4",
}


def replication_settings(n: int) -> dict[str, str]:
    rf = str(min(n, 3))
    isr = "2" if n >= 3 else "1"
    return {
        "default.replication.factor": rf,
        "min.insync.replicas": isr,
        "offsets.topic.replication.factor": rf,
        "transaction.state.log.replication.factor": rf,
        "transaction.state.log.min.isr": isr,
        "share.coordinator.state.topic.replication.factor": rf,
        "share.coordinator.state.topic.min.isr": isr,
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the JVM binds: TIME_WAIT ok
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, no leading '-'."""
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


def _read_properties(path: Path) -> dict[str, str]:
    props: dict[str, str] = {}
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                props[key.strip()] = value.strip()
    return props


def _listener_port(props: dict[str, str], name: str) -> int | None:
    for item in props.get("listeners", "").split(","):
        if item.startswith(f"{name}://"):
            return int(item.rsplit(":", 1)[1])
    return None


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(text[-lines:])


def recorded_pid(data_dir: Path) -> int | None:
    """The pid in data_dir's pid file if it is still this data dir's kafka.Kafka JVM."""
    data_dir = Path(data_dir).expanduser().resolve()
    try:
        pid = int((data_dir / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    args = cmdline(pid)
    ours = "kafka.Kafka" in args and str(data_dir / _CONFIG_FILE) in args
    is_java = bool(args) and Path(args[0]).name.startswith("java")
    return pid if ours and is_java and pid_alive(pid) else None


def recorded_port(data_dir: Path) -> int | None:
    """The client (PLAINTEXT) port in data_dir's server.properties, if it has one."""
    data_dir = Path(data_dir).expanduser().resolve()
    return _listener_port(_read_properties(data_dir / _CONFIG_FILE), "PLAINTEXT")


# --------------------------------------------------------------------------------------------
# one node


class LocalBroker:
    """One KRaft node (broker and controller in one JVM) on 127.0.0.1.

    Everything lives in ``data_dir``: ``server.properties``, the logs (``data/``), the broker
    log ``server.log`` (WARN and above) and the JVM's output ``kafka.out``. The storage is
    formatted once (``data/meta.properties``); a later start, after :meth:`stop` or
    :meth:`kill`, recovers the same topics and offsets.

    With ``quorum=None`` the node is a single-voter dynamic quorum (formatted ``--standalone``);
    with ``quorum="1@127.0.0.1:9093,2@..."`` it is one voter of that static quorum
    (``controller.quorum.voters``), all of whose nodes must be formatted with the same
    ``cluster_id``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int = 9092,
        controller_port: int | None = None,
        node_id: int = 1,
        heap: str = "384m",
        quorum: str | None = None,
        extra: dict[str, str] | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        if controller_port is None:  # keep the one this data dir was made with: it is stored
            old = _read_properties(self.data_dir / _CONFIG_FILE)
            controller_port = _listener_port(old, "CONTROLLER") or free_port()
        self.controller_port = controller_port
        self.node_id = node_id
        self.heap = heap
        self.quorum = quorum
        self.extra = dict(extra or {})
        self.cluster_id = cluster_id
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._atexit = False

    # -- configuration

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>``, for ``bootstrap_servers``."""
        return f"{HOST}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.data_dir / _CONFIG_FILE

    @property
    def log_path(self) -> Path:
        """The broker's own log (log4j2, WARN and above)."""
        return self.data_dir / "server.log"

    def settings(self) -> dict[str, str]:
        """The server properties this node runs with."""
        props = {
            "node.id": str(self.node_id),
            "listeners": f"PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{self.port}",
            "log.dirs": str(self.data_dir / "data"),
            **BASE_SETTINGS,
            **replication_settings(1 if self.quorum is None else self.quorum.count("@")),
        }
        if self.quorum is None:
            props["controller.quorum.bootstrap.servers"] = f"{HOST}:{self.controller_port}"
        else:
            props["controller.quorum.voters"] = self.quorum
        props.update(self.extra)
        return props

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = "".join(f"{k}={v}\n" for k, v in self.settings().items())
        self.config_path.write_text(f"# written by streamer/kafka/local.py\n{text}")

    def _jvm(self, heap: str) -> list[str]:
        more = os.environ.get("TICKCAST_KAFKA_OPTS", "").split()  # e.g. for profiling
        return [java(), f"-Xmx{heap}", *JVM_FLAGS, *more, "-cp", str(ensure_jars() / "*")]

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "data" / "meta.properties").exists()

    def format(self) -> None:
        """Format the storage (once: a formatted data dir is left as it is)."""
        self._write_config()
        if self.formatted:
            return
        cid = self.cluster_id or new_cluster_id()
        cmd = [*self._jvm("256m"), "-Dlog4j2.configurationFile=" + str(LOG4J_CONFIG)]
        cmd += [f"-Dkafka.logs.dir={self.data_dir}", "kafka.tools.StorageTool", "format"]
        cmd += ["-t", cid, "-c", str(self.config_path)]
        if self.quorum is None:
            cmd.append("--standalone")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise LocalKafkaError(f"formatting {self.data_dir} failed:\n{proc.stdout}{proc.stderr}")
        self.cluster_id = cid

    # -- process

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs (or last ran)."""
        return self._pid

    @property
    def running(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and pid_alive(self._pid)

    def spawn(self, detach: bool = False) -> None:
        """Format if needed and start the JVM, without waiting for it to serve (see
        :meth:`wait_ready`)."""
        if self.running:
            raise LocalKafkaError(f"broker {self.node_id} is already running (pid {self._pid})")
        for p in (self.port, self.controller_port):
            if not _port_free(p):
                raise LocalKafkaError(f"port {p} on {HOST} is in use")
        self.format()
        cmd = [*self._jvm(self.heap), f"-Dlog4j2.configurationFile={LOG4J_CONFIG}"]
        cmd += [f"-Dkafka.logs.dir={self.data_dir}", "kafka.Kafka", str(self.config_path)]
        out = self.data_dir / _OUT_FILE
        if detach:
            # Through sh, so the JVM is not our child: it outlives us and init reaps it.
            script = 'out=$1; shift; "$@" </dev/null >>"$out" 2>&1 & echo $!'
            res = subprocess.run(
                ["sh", "-c", script, "sh", str(out), *cmd],
                capture_output=True, text=True, check=True, start_new_session=True,
            )  # fmt: skip
            self._proc, self._pid = None, int(res.stdout.strip())
        else:
            with open(out, "ab") as fh:
                self._proc = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                    start_new_session=True,
                )  # fmt: skip
            self._pid = self._proc.pid
            if not self._atexit:  # never leave a test broker behind
                atexit.register(self._kill_quietly)
                self._atexit = True
        (self.data_dir / PID_FILE).write_text(f"{self._pid}\n")

    def _ready(self, expect: int = 1) -> bool:
        try:
            ids = metadata_brokers(self.port, timeout=1.0)
        except (OSError, struct.error):
            return False
        return self.node_id in ids and len(ids) >= expect

    def wait_ready(self, timeout: float = 60, expect: int = 1) -> None:
        """Block until the node answers Metadata requests listing itself (and ``expect``
        brokers in all); raise :class:`~streamer.kafka.jars.LocalKafkaError` with the log tail
        if it dies or times out."""
        deadline = time.monotonic() + timeout
        while not self._ready(expect):
            if not self.running:
                raise LocalKafkaError(f"broker {self.node_id} exited during start\n{self._logs()}")
            if time.monotonic() > deadline:
                self.kill()
                raise LocalKafkaError(
                    f"broker {self.node_id} not ready after {timeout:.0f} s\n{self._logs()}"
                )
            time.sleep(0.2)

    def start(self, timeout: float = 60, detach: bool = False) -> None:
        """Format if needed, start the JVM and wait until it serves Kafka requests.

        ``detach=True`` leaves a broker that outlives this Python process (``tickcast kafka
        up``); otherwise it is killed at interpreter exit if still running.
        """
        self.spawn(detach)
        self.wait_ready(timeout)

    def adopt(self, pid: int) -> None:
        """Act on the running JVM ``pid`` (from :func:`recorded_pid`: a detached broker this
        object did not start), so :attr:`running`, :meth:`stop` and :meth:`kill` reach it."""
        self._proc, self._pid = None, pid

    def terminate(self) -> None:
        """SIGTERM, without waiting (:meth:`stop` waits)."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        if self._pid is not None and self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, sig)

    def _wait_exit(self, timeout: float) -> bool:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, timeout: float = 30) -> None:
        """Shut down cleanly (SIGTERM), or SIGKILL after ``timeout`` seconds."""
        self._signal(signal.SIGTERM)
        if not self._wait_exit(timeout):
            self.kill()
        (self.data_dir / PID_FILE).unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (for fault tests)."""
        self._signal(signal.SIGKILL)
        self._wait_exit(10)
        (self.data_dir / PID_FILE).unlink(missing_ok=True)

    def _kill_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.kill()

    def _logs(self) -> str:
        parts = []
        for path in (self.data_dir / _OUT_FILE, self.log_path):
            tail = _tail(path)
            if tail:
                parts.append(f"--- {path}\n{tail}")
        return "\n".join(parts) or "(no log output)"

    def __repr__(self) -> str:
        state = f"pid {self._pid}" if self.running else "stopped"
        return f"LocalBroker({self.bootstrap}, node {self.node_id}, {state}, {self.data_dir})"
