"""A real Apache Kafka broker on 127.0.0.1, for development, tests and benchmarks.

The broker is the pinned Maven artifact ``org.apache.kafka:kafka_2.13`` (see
``deploy/kafka/pom.xml``): Maven copies its jars once into a cache folder outside git
(:func:`ensure_jars`), and each node runs as ``java -cp '<libs>/*' kafka.Kafka server.properties``
in KRaft mode, broker and controller in one process. No Docker, no download at run time.

- :class:`LocalBroker`: one node (dynamic single-voter quorum, or one voter of a static quorum).
- :class:`LocalCluster`: n nodes (3 by default) with a static quorum, replication factor 3.
- :func:`up`, :func:`down`, :func:`status` and :func:`add_cli`: ``tickcast kafka up|down|status``,
  a broker that outlives the command.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

__all__ = [
    "KAFKA_VERSION",
    "KafkaError",
    "LocalBroker",
    "LocalCluster",
    "add_cli",
    "default_data_dir",
    "down",
    "ensure_jars",
    "free_port",
    "kafka_home",
    "metadata_brokers",
    "status",
    "up",
]

KAFKA_VERSION = "4.1.2"  # keep in sync with deploy/kafka/pom.xml

HOST = "127.0.0.1"
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY / "pom.xml"
LOG4J_CONFIG = DEPLOY / "log4j2.properties"
_MARKER = ".complete"  # in kafka_home(): holds the sha256 of the pom the jars came from
_PID_FILE = "kafka.pid"
_CONFIG_FILE = "server.properties"
_OUT_FILE = "kafka.out"  # the JVM's own stdout/stderr; the broker log is server.log

# Small, fast-starting JVM. SerialGC on a small heap. C1 only (TieredStopAtLevel=1): measured
# here (2 cores, aiokafka producing 1.2M 100-byte records, then consuming them) the broker used
# a third less CPU than with C2 for the same throughput, since C2's compiling costs more than it
# gains on a broker whose hot paths are copies and CRC intrinsics. TICKCAST_KAFKA_OPTS appends
# flags (later flags win, e.g. -XX:TieredStopAtLevel=4 brings C2 back).
JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-XX:TieredStopAtLevel=1",
    "-Xshare:auto",
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
    "-Dlog4j2.disable.jmx=true",
)

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


def _replication(n: int) -> dict[str, str]:
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


class KafkaError(RuntimeError):
    """Kafka could not be fetched, formatted, started or stopped; the message says why."""


# --------------------------------------------------------------------------------------------
# jars


def kafka_home() -> Path:
    """The cache folder of the pinned Kafka: ``$TICKCAST_KAFKA_HOME`` or
    ``~/.cache/tickcast/kafka-<version>`` (``$XDG_CACHE_HOME`` respected); jars in ``libs/``."""
    env = os.environ.get("TICKCAST_KAFKA_HOME")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "tickcast" / f"kafka-{KAFKA_VERSION}"


def _pom_digest() -> str:
    return hashlib.sha256(POM.read_bytes()).hexdigest()


def ensure_jars(quiet: bool = True) -> Path:
    """Return the folder of the Kafka jars, fetching them with Maven first if they are missing
    or came from another version of ``deploy/kafka/pom.xml`` (about 45 MB, seconds).

    ``quiet=False`` says when it fetches and lets Maven's errors through to the terminal;
    quiet, they are in the exception.

    Raises :class:`KafkaError` if Maven is not installed or the fetch fails.
    """
    with _JARS_LOCK:
        return _ensure_jars(quiet)


_JARS_LOCK = threading.Lock()


def _ensure_jars(quiet: bool) -> Path:
    home = kafka_home()
    libs = home / "libs"
    marker = home / _MARKER
    if not POM.exists():
        raise KafkaError(f"{POM} not found: the Kafka jars are fetched from a tickcast checkout")
    digest = _pom_digest()
    with contextlib.suppress(OSError):
        if marker.read_text().strip() == digest and any(libs.glob("kafka_2.13-*.jar")):
            return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            return libs  # filled by hand, e.g. from an unpacked Kafka distribution
        raise KafkaError(
            "Maven (mvn) is not on PATH; it fetches the pinned Kafka jars from Maven Central. "
            "Install it (e.g. apt-get install maven), or set TICKCAST_KAFKA_HOME to a folder "
            f"whose libs/ holds the Kafka {KAFKA_VERSION} jars (an unpacked distribution)."
        )
    home.mkdir(parents=True, exist_ok=True)
    # Fetch into a fresh folder, then swap it in: a concurrent or interrupted fetch never
    # leaves a half-filled libs/ behind a valid marker.
    tmp = Path(tempfile.mkdtemp(prefix="libs-", dir=home))
    cmd = [mvn, "-B", "-q", "-f", str(POM), "dependency:copy-dependencies"]
    cmd.append(f"-DoutputDirectory={tmp}")
    if not quiet:
        print(f"fetching the Kafka {KAFKA_VERSION} jars into {libs}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=quiet, text=True, check=False)
    if proc.returncode != 0 or not any(tmp.glob("kafka_2.13-*.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        out = (proc.stdout or "") + (proc.stderr or "") if quiet else ""
        raise KafkaError(f"mvn could not fetch the Kafka jars (exit {proc.returncode})\n{out}")
    old = home / f"libs.old-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        libs.rename(old)
    tmp.rename(libs)
    shutil.rmtree(old, ignore_errors=True)
    marker.write_text(digest + "\n")
    return libs


def _java() -> str:
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise KafkaError("java is not on PATH: Kafka 4 needs a Java 17+ runtime")
    return java


# --------------------------------------------------------------------------------------------
# small helpers


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


def _cluster_id() -> str:
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


def _pid_alive(pid: int) -> bool:
    """Whether pid is a live process (a zombie child of ours is reaped and counts as dead)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        pass
    else:
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


# The readiness probe: a raw Metadata v4 request (the oldest version Kafka 4 still serves).


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return bytes(buf)


def metadata_brokers(port: int, timeout: float = 2.0) -> list[int]:
    """The node ids that the broker on 127.0.0.1:port lists as alive, through a raw Metadata
    request; raises OSError if nothing serves Kafka requests there."""
    client = b"tickcast-probe"
    header = struct.pack(">hhih", 3, 4, 1, len(client)) + client  # Metadata v4, correlation 1
    body = struct.pack(">ib", 0, 0)  # no topics, no auto-creation
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(struct.pack(">i", len(header) + len(body)) + header + body)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        data = _recv_exact(sock, size)
    # correlation id, throttle_time_ms, then brokers: [node_id, host, port, rack]
    off = 8
    (count,) = struct.unpack_from(">i", data, off)
    off += 4
    ids = []
    for _ in range(max(count, 0)):
        (node_id, host_len) = struct.unpack_from(">ih", data, off)
        off += 6 + host_len + 4
        (rack_len,) = struct.unpack_from(">h", data, off)
        off += 2 + max(rack_len, 0)
        ids.append(node_id)
    return ids


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
            **_replication(1 if self.quorum is None else self.quorum.count("@")),
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
        return [_java(), f"-Xmx{heap}", *JVM_FLAGS, *more, "-cp", str(ensure_jars() / "*")]

    @property
    def formatted(self) -> bool:
        return (self.data_dir / "data" / "meta.properties").exists()

    def format(self) -> None:
        """Format the storage (once: a formatted data dir is left as it is)."""
        self._write_config()
        if self.formatted:
            return
        cid = self.cluster_id or _cluster_id()
        cmd = [*self._jvm("256m"), "-Dlog4j2.configurationFile=" + str(LOG4J_CONFIG)]
        cmd += [f"-Dkafka.logs.dir={self.data_dir}", "kafka.tools.StorageTool", "format"]
        cmd += ["-t", cid, "-c", str(self.config_path)]
        if self.quorum is None:
            cmd.append("--standalone")
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120)
        if proc.returncode != 0:
            raise KafkaError(f"formatting {self.data_dir} failed:\n{proc.stdout}{proc.stderr}")
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
        return self._pid is not None and _pid_alive(self._pid)

    def _spawn(self, detach: bool = False) -> None:
        if self.running:
            raise KafkaError(f"broker {self.node_id} is already running (pid {self._pid})")
        for p in (self.port, self.controller_port):
            if not _port_free(p):
                raise KafkaError(f"port {p} on {HOST} is in use")
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
        (self.data_dir / _PID_FILE).write_text(f"{self._pid}\n")

    def _ready(self, expect: int = 1) -> bool:
        try:
            ids = metadata_brokers(self.port, timeout=1.0)
        except (OSError, struct.error):
            return False
        return self.node_id in ids and len(ids) >= expect

    def wait_ready(self, timeout: float = 60, expect: int = 1) -> None:
        """Block until the node answers Metadata requests listing itself (and ``expect``
        brokers in all); raise :class:`KafkaError` with the log tail if it dies or times out."""
        deadline = time.monotonic() + timeout
        while not self._ready(expect):
            if not self.running:
                raise KafkaError(f"broker {self.node_id} exited during start\n{self._logs()}")
            if time.monotonic() > deadline:
                self.kill()
                raise KafkaError(
                    f"broker {self.node_id} not ready after {timeout:.0f} s\n{self._logs()}"
                )
            time.sleep(0.2)

    def start(self, timeout: float = 60, detach: bool = False) -> None:
        """Format if needed, start the JVM and wait until it serves Kafka requests.

        ``detach=True`` leaves a broker that outlives this Python process (``tickcast kafka
        up``); otherwise it is killed at interpreter exit if still running.
        """
        self._spawn(detach)
        self.wait_ready(timeout)

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
        (self.data_dir / _PID_FILE).unlink(missing_ok=True)

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (for fault tests)."""
        self._signal(signal.SIGKILL)
        self._wait_exit(10)
        (self.data_dir / _PID_FILE).unlink(missing_ok=True)

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


# --------------------------------------------------------------------------------------------
# n nodes


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
        cid = _cluster_id()
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
                    node._spawn()
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
            node._signal(signal.SIGTERM)
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


# --------------------------------------------------------------------------------------------
# tickcast kafka up|down|status


def default_data_dir() -> Path:
    """``$TICKCAST_KAFKA_DATA`` or ``~/.local/state/tickcast/kafka``."""
    env = os.environ.get("TICKCAST_KAFKA_DATA")
    if env:
        return Path(env).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "tickcast" / "kafka"


def _recorded_pid(data_dir: Path) -> int | None:
    """The pid in data_dir's pid file if it is still this data dir's kafka.Kafka JVM."""
    data_dir = Path(data_dir).expanduser().resolve()
    try:
        pid = int((data_dir / _PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    args = _cmdline(pid)
    ours = "kafka.Kafka" in args and str(data_dir / _CONFIG_FILE) in args
    is_java = bool(args) and Path(args[0]).name.startswith("java")
    return pid if ours and is_java and _pid_alive(pid) else None


def status(data_dir: Path | None = None) -> dict[str, Any]:
    """What runs from ``data_dir``: running, pid, bootstrap, ready (answers requests)."""
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    pid = _recorded_pid(data_dir)
    port = _listener_port(_read_properties(data_dir / _CONFIG_FILE), "PLAINTEXT")
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
    pid = _recorded_pid(data_dir)
    if pid is not None:
        old = _listener_port(_read_properties(data_dir / _CONFIG_FILE), "PLAINTEXT")
        broker = LocalBroker(data_dir, port=old or port)
        broker._pid = pid
        return broker
    broker = LocalBroker(data_dir, port=port)
    broker._spawn(detach=True)
    broker.wait_ready(timeout)
    return broker


def down(data_dir: Path | None = None, timeout: float = 30) -> bool:
    """Stop the broker recorded in ``data_dir`` (that pid only, and only if it is this data
    dir's ``kafka.Kafka`` JVM). False if none was running."""
    data_dir = Path(data_dir or default_data_dir()).expanduser().resolve()
    pid = _recorded_pid(data_dir)
    if pid is None:
        (data_dir / _PID_FILE).unlink(missing_ok=True)
        return False
    broker = LocalBroker(data_dir)
    broker._pid = pid
    broker.stop(timeout)
    return True


def _cli(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else None
    if args.action == "up":
        before = status(data_dir)
        try:
            broker = up(args.port, data_dir)
        except KafkaError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        verb = "already running" if before["running"] else "started"
        print(f"kafka {KAFKA_VERSION} {verb}: {broker.bootstrap} (pid {broker.pid}, "
              f"data {broker.data_dir})")  # fmt: skip
        return 0
    if args.action == "down":
        stopped = down(data_dir)
        print("kafka stopped" if stopped else "kafka was not running")
        return 0
    info = status(data_dir)
    if args.json:
        print(json.dumps(info))
    elif info["running"]:
        state = "ready" if info["ready"] else "not answering yet"
        print(f"kafka running: {info['bootstrap']} (pid {info['pid']}, {state}, "
              f"data {info['data_dir']})")  # fmt: skip
    else:
        print(f"kafka not running (data {info['data_dir']})")
    return 0 if info["running"] else 3


def add_cli(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``tickcast kafka up|down|status`` on the CLI's subparsers."""
    p = sub.add_parser(
        "kafka",
        help="a local Kafka broker for development: up, down, status",
        description=f"A single-node Apache Kafka {KAFKA_VERSION} broker on 127.0.0.1 (KRaft), "
        "from jars Maven fetches once (deploy/kafka). `up` leaves it running in the background.",
    )
    p.add_argument("action", choices=("up", "down", "status"))
    p.add_argument("--port", type=int, default=9092, help="client port for `up` (default 9092)")
    p.add_argument(
        "--data-dir",
        help="broker data and logs (default $TICKCAST_KAFKA_DATA or ~/.local/state/tickcast/kafka)",
    )
    p.add_argument("--json", action="store_true", help="`status` as one JSON object")
    p.set_defaults(func=_cli)
