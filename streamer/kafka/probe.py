"""Is it alive? The local broker's readiness probe (a raw Kafka Metadata request) and the
``/proc`` checks on the JVM's process id.

A dev/test tool. May import the standard library only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from pathlib import Path

__all__ = ["cmdline", "metadata_brokers", "pid_alive"]

HOST = "127.0.0.1"


def pid_alive(pid: int) -> bool:
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


def cmdline(pid: int) -> list[str]:
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
