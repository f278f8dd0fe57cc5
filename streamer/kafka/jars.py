"""The pinned Apache Kafka for the local broker: its version, its jars (fetched once by Maven
from ``deploy/kafka/pom.xml`` into a cache folder outside git), the Java runtime and the
JVM flags it runs with.

A dev/test tool, never imported by the serving path. May import the standard library only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

__all__ = [
    "DEPLOY",
    "JVM_FLAGS",
    "KAFKA_VERSION",
    "LOG4J_CONFIG",
    "POM",
    "LocalKafkaError",
    "ensure_jars",
    "java",
    "kafka_home",
]

KAFKA_VERSION = "4.1.2"  # keep in sync with deploy/kafka/pom.xml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kafka"
POM = DEPLOY / "pom.xml"
LOG4J_CONFIG = DEPLOY / "log4j2.properties"
_MARKER = ".complete"  # in kafka_home(): holds the sha256 of the pom the jars came from

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


class LocalKafkaError(RuntimeError):
    """The local Kafka could not be fetched, formatted, started or stopped; the message says
    why. (Not aiokafka's `KafkaError`, which a client raises talking to any broker.)"""


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

    Raises :class:`LocalKafkaError` if Maven is not installed or the fetch fails.
    """
    with _JARS_LOCK:
        return _ensure_jars(quiet)


_JARS_LOCK = threading.Lock()


def _ensure_jars(quiet: bool) -> Path:
    home = kafka_home()
    libs = home / "libs"
    marker = home / _MARKER
    if not POM.exists():
        raise LocalKafkaError(
            f"{POM} not found: the Kafka jars are fetched from a tickcast checkout"
        )
    digest = _pom_digest()
    with contextlib.suppress(OSError):
        if marker.read_text().strip() == digest and any(libs.glob("kafka_2.13-*.jar")):
            return libs
    mvn = shutil.which("mvn")
    if mvn is None:
        if (libs / f"kafka_2.13-{KAFKA_VERSION}.jar").exists():
            return libs  # filled by hand, e.g. from an unpacked Kafka distribution
        raise LocalKafkaError(
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
        raise LocalKafkaError(f"mvn could not fetch the Kafka jars (exit {proc.returncode})\n{out}")
    old = home / f"libs.old-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        libs.rename(old)
    tmp.rename(libs)
    shutil.rmtree(old, ignore_errors=True)
    marker.write_text(digest + "\n")
    return libs


def java() -> str:
    """The `java` binary: ``$JAVA_HOME/bin/java`` or the one on PATH (Kafka 4 needs 17+)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").exists():
        return str(Path(java_home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise LocalKafkaError("java is not on PATH: Kafka 4 needs a Java 17+ runtime")
    return java
