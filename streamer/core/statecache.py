"""Where a symbol's state lives while it holds no device slot: a bounded host cache that the
compacted state topic backs.

Pure and synchronous (no Kafka): the engine puts an evicted symbol's state record here and
takes it back when the symbol ticks again; the serving shell (`streamer.serve.recovery`)
fills it from the state topic (on assignment, and for symbols this cache let go of) and
tells it which records the topic holds once their transaction committed.

Two maps:

- `held`: symbol -> its latest state record (the bytes the state topic stores), least
  recently used first, at most `capacity` entries once `trim` runs. An entry is
  *confirmed* when the state topic holds a committed copy of exactly these bytes; only a
  confirmed entry may be let go of, so the cache never holds the only copy of a state it
  drops. An unconfirmed entry is written by its partition's next checkpoint.
- `stored`: symbol -> where the topic holds its latest committed record (partition,
  offset) and what that record is (seq, model version, last tick time), for every symbol
  of the partitions this instance owns. A symbol neither on the device nor in `held`
  (one of `outside`) is fetched from there (`wanted`, then `fill`).

Memory: a held entry is one state record (4 + header + 24·history + 8·layers·units bytes:
4,804 for the default model) plus ~250 bytes of Python objects; a `stored` entry is ~250
bytes. Records whose last tick is older than the state age limit are forgotten
(`expired`), so `stored` holds the symbols seen within that limit.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from streamer.core.state_records import record_info

__all__ = ["StateCache"]


@dataclass
class _Held:
    partition: int
    record: bytes
    last_ts: int
    confirmed: bool  # the topic holds a committed copy of `record`
    sent: bool = False  # in a checkpoint whose transaction has not committed yet


@dataclass(frozen=True)
class _Stored:
    partition: int
    offset: int  # in the state topic's partition
    seq: int
    model: str
    last_ts: int


class StateCache:
    """Bounded host-side cache of state records, backed by the state topic.

    Args:
      capacity: most records held once `trim` runs (≥ 0). Unconfirmed records are never
        dropped, so between a burst of evictions and the checkpoint that confirms them the
        cache may hold more.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        self.capacity = capacity
        self.held: OrderedDict[str, _Held] = OrderedDict()
        self.stored: dict[str, _Stored] = {}
        self._pending: dict[int, set[str]] = {}  # partition -> held, unconfirmed, not sent
        # Symbols whose state only the topic holds here (let go of, or indexed at a restore
        # beyond the capacity): empty, serving never looks for states to fetch.
        self.outside: set[str] = set()

    def __len__(self) -> int:
        return len(self.held)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self.held or symbol in self.stored

    def nbytes(self) -> int:
        """Bytes of the records held (not counting Python's per-object overhead)."""
        return sum(len(h.record) for h in self.held.values())

    # ------------------------------------------------------------------ engine side
    def put(self, symbol: str, partition: int, record: bytes, *, dirty: bool) -> None:
        """Keep an evicted symbol's state record. `dirty`: it holds ticks no record in the
        topic holds. A clean record is confirmed when the topic's latest committed record
        of the symbol is the same state (seq and model), else written again."""
        info = record_info(record)
        st = self.stored.get(symbol)
        confirmed = not dirty and st is not None and (st.seq, st.model) == (info.seq, info.model)
        before = self.held.get(symbol)
        if before is not None:
            self._unpend(before.partition, symbol)
        self.outside.discard(symbol)
        self.held[symbol] = _Held(partition, record, info.last_ts, confirmed)
        self.held.move_to_end(symbol)
        if not confirmed:
            self._pending.setdefault(partition, set()).add(symbol)

    def take(self, symbol: str) -> bytes | None:
        """Remove and return a held record (the symbol goes back on the device); None when
        none is held.

        Raises:
          LookupError: the state is only in the topic: `fill` it first.
        """
        h = self.held.pop(symbol, None)
        if h is not None:
            self._unpend(h.partition, symbol)
            return h.record
        if symbol in self.stored:
            raise LookupError(f"the state of {symbol!r} is in the state topic, not fetched")
        return None

    def partition_of(self, symbol: str) -> int | None:
        """The partition whose state record this is (None: no state known)."""
        h = self.held.get(symbol)
        if h is not None:
            return h.partition
        st = self.stored.get(symbol)
        return None if st is None else st.partition

    def pending(self, partition: int) -> list[str]:
        """Held symbols of `partition` whose record the topic does not hold yet (and no
        checkpoint in flight carries)."""
        return sorted(self._pending.get(partition, ()))

    def has_pending(self, partition: int) -> bool:
        """Whether `pending(partition)` is not empty (cheap: for every batch)."""
        return partition in self._pending

    def is_pending(self, symbol: str) -> bool:
        """Whether `symbol`'s held record waits for a checkpoint to write it."""
        h = self.held.get(symbol)
        return h is not None and symbol in self._pending.get(h.partition, ())

    def _unpend(self, partition: int, symbol: str) -> None:
        waiting = self._pending.get(partition)
        if waiting is not None:
            waiting.discard(symbol)
            if not waiting:
                del self._pending[partition]

    def sending(self, symbol: str) -> bytes | None:
        """The held record of `symbol`, now marked as carried by a checkpoint (None: not
        held)."""
        h = self.held.get(symbol)
        if h is None:
            return None
        h.sent = True
        self._unpend(h.partition, symbol)
        return h.record

    # ------------------------------------------------------------------ topic side
    def wanted(self, symbols: Iterable[str]) -> list[tuple[str, int, int]]:
        """Of `symbols`, those whose state is in the topic only: (symbol, partition,
        offset) to fetch and `fill`. The caller leaves out the symbols on the device."""
        out = []
        for sym in symbols:
            if sym in self.outside:
                st = self.stored[sym]
                out.append((sym, st.partition, st.offset))
        return out

    def fill(self, value: bytes, offset: int) -> str:
        """Hold a record read from the state topic at `offset` (committed): confirmed.
        Returns its symbol.

        Raises:
          ValueError: not a state record.
        """
        info = record_info(value)
        self.stored[info.symbol] = _Stored(info.partition, offset, info.seq, info.model,
                                           info.last_ts)  # fmt: skip
        old = self.held.get(info.symbol)
        if old is not None:
            self._unpend(old.partition, info.symbol)
        self.outside.discard(info.symbol)
        self.held[info.symbol] = _Held(info.partition, value, info.last_ts, True)
        self.held.move_to_end(info.symbol)
        return info.symbol

    def index(self, value: bytes, offset: int) -> str:
        """Note a committed record of the topic without holding it (a restore beyond the
        capacity). Returns its symbol. Raises ValueError: not a state record."""
        info = record_info(value)
        self.stored[info.symbol] = _Stored(info.partition, offset, info.seq, info.model,
                                           info.last_ts)  # fmt: skip
        if info.symbol not in self.held:
            self.outside.add(info.symbol)
        return info.symbol

    def committed(self, offset: int, value: bytes) -> None:
        """A state record this instance wrote is committed at `offset` of the topic."""
        info = record_info(value)
        self.stored[info.symbol] = _Stored(info.partition, offset, info.seq, info.model,
                                           info.last_ts)  # fmt: skip
        h = self.held.get(info.symbol)
        if h is not None and h.record is value:
            h.confirmed, h.sent = True, False

    def forget(self, symbol: str) -> None:
        """Drop everything known about `symbol` (its state starts afresh)."""
        h = self.held.pop(symbol, None)
        if h is not None:
            self._unpend(h.partition, symbol)
        self.stored.pop(symbol, None)
        self.outside.discard(symbol)

    def expired(
        self, partition: int, now_ts: int, max_age_ms: int, skip: Iterable[str]
    ) -> list[str]:
        """Forget, and return, the symbols of `partition` whose state's last tick is more
        than `max_age_ms` before `now_ts` (epoch ms), except those in `skip` (on the
        device). Their records should be deleted from the topic (tombstones)."""
        limit = now_ts - max_age_ms
        keep = set(skip)
        old = {s for s, h in self.held.items()
               if h.partition == partition and h.last_ts < limit and s not in keep}  # fmt: skip
        old |= {s for s, st in self.stored.items()
                if st.partition == partition and st.last_ts < limit and s not in keep}  # fmt: skip
        for s in old:
            self.forget(s)
        return sorted(old)

    def trim(self) -> int:
        """Let go of the least recently used confirmed records beyond `capacity` (the
        topic still has them). Returns how many."""
        excess = len(self.held) - self.capacity
        if excess <= 0:
            return 0
        drop = [s for s, h in self.held.items() if h.confirmed][:excess]
        for s in drop:
            del self.held[s]
        self.outside.update(drop)
        return len(drop)

    def drop_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the symbols of these partitions (they moved to another instance)."""
        ps = set(partitions)
        for s in [s for s, h in self.held.items() if h.partition in ps]:
            del self.held[s]
        for p in ps:
            self._pending.pop(p, None)
        for s in [s for s, st in self.stored.items() if st.partition in ps]:
            del self.stored[s]
            self.outside.discard(s)
