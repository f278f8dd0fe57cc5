"""Client tuning for the serving process, applied by an explicit `configure()` call from the
service or the CLI (never on import).

Two things, both about one Kafka transaction per micro-batch:

* A transaction begun right after the previous commit is refused (CONCURRENT_TRANSACTIONS)
  until the broker has written the commit markers, typically within a couple of ms; the
  client retries after a fixed 20 ms (KAFKA-5477; aiokafka copies Java's value). With one
  transaction per micro-batch that 20 ms lands on every batch's latency, so retry after
  2 ms. Measured on the 2-core dev VM, back-to-back transactions: 29 ms -> 9 ms each.
  aiokafka has no setting for it: `BACKOFF_OVERRIDE` is a module global of its sender.
* A fresh broker creates `__consumer_offsets` on the first group's request; until then
  aiokafka logs "GroupCoordinatorNotAvailableError" at ERROR and retries. That is logged
  at WARNING: still seen if it lasts, no longer the first thing a new user reads.
* Kafka >= 3.6 answers a produce to a partition whose transaction is still being verified
  (the KIP-890 form of CONCURRENT_TRANSACTIONS) with NOT_ENOUGH_REPLICAS for clients of
  aiokafka's protocol version, so that they retry; aiokafka logs each retry as a warning.
  On a healthy cluster that is routine: it is logged at DEBUG.
"""

from __future__ import annotations

import logging

from aiokafka.producer import sender as aiokafka_sender

__all__ = [
    "TRANSACTION_RETRY_BACKOFF_S",
    "CoordinatorNotReadyYet",
    "QuietTransactionRetries",
    "configure",
]

TRANSACTION_RETRY_BACKOFF_S = 0.002
_SENDER_LOG = "aiokafka.producer.sender"
_GROUP_LOG = "aiokafka.consumer.group_coordinator"


class QuietTransactionRetries(logging.Filter):
    """Logs aiokafka's NotEnoughReplicasError retry warnings at DEBUG (see the module doc)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and "NotEnoughReplicasError" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class CoordinatorNotReadyYet(logging.Filter):
    """Logs aiokafka's GroupCoordinatorNotAvailableError (retried) at WARNING, not ERROR."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.levelno == logging.ERROR
            and "GroupCoordinatorNotAvailable" in record.getMessage()
        ):
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure() -> None:
    """Apply the tuning (idempotent): the transaction retry backoff and the log filter."""
    aiokafka_sender.BACKOFF_OVERRIDE = TRANSACTION_RETRY_BACKOFF_S
    log = logging.getLogger(_SENDER_LOG)
    if not any(isinstance(f, QuietTransactionRetries) for f in log.filters):
        log.addFilter(QuietTransactionRetries())
    group = logging.getLogger(_GROUP_LOG)
    if not any(isinstance(f, CoordinatorNotReadyYet) for f in group.filters):
        group.addFilter(CoordinatorNotReadyYet())
