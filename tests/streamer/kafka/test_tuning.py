"""Client tuning applied by an explicit call (streamer/kafka/tuning.py), never on import."""

from __future__ import annotations

import logging

from aiokafka.producer import sender as aiokafka_sender

from streamer.kafka import tuning


def test_configure_sets_the_backoff_and_one_filter() -> None:
    before = aiokafka_sender.BACKOFF_OVERRIDE
    try:
        tuning.configure()
        tuning.configure()  # idempotent
        assert aiokafka_sender.BACKOFF_OVERRIDE == tuning.TRANSACTION_RETRY_BACKOFF_S
        filters = logging.getLogger("aiokafka.producer.sender").filters
        assert sum(isinstance(f, tuning.QuietTransactionRetries) for f in filters) == 1
    finally:
        aiokafka_sender.BACKOFF_OVERRIDE = before


def test_the_filter_demotes_only_not_enough_replicas_warnings() -> None:
    f = tuning.QuietTransactionRetries()

    def rec(level: int, msg: str) -> logging.LogRecord:
        return logging.LogRecord("aiokafka.producer.sender", level, "x", 1, msg, None, None)

    routine = rec(logging.WARNING, "Got error produce response: NotEnoughReplicasError")
    f.filter(routine)
    assert routine.levelno == logging.DEBUG
    other = rec(logging.WARNING, "Got error produce response: NotLeaderForPartitionError")
    assert f.filter(other) and other.levelno == logging.WARNING


def test_a_coordinator_not_ready_yet_is_a_warning_and_other_errors_stay() -> None:
    f = tuning.CoordinatorNotReadyYet()

    def rec(msg: str) -> logging.LogRecord:
        name = "aiokafka.consumer.group_coordinator"
        return logging.LogRecord(name, logging.ERROR, "x", 1, msg, None, None)

    early = rec("Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError")
    assert f.filter(early) and early.levelno == logging.WARNING
    other = rec("Group Coordinator Request failed: [Error 25] UnknownMemberIdError")
    assert f.filter(other) and other.levelno == logging.ERROR


def test_importing_the_processor_changes_nothing() -> None:
    import subprocess
    import sys

    code = (
        "from aiokafka.producer import sender as s; before = s.BACKOFF_OVERRIDE\n"
        "import streamer.serve.service, streamer.serve.processor, model.runtime\n"
        "import jax\n"
        "assert s.BACKOFF_OVERRIDE == before, s.BACKOFF_OVERRIDE\n"
        "assert jax.config.read('jax_cpu_enable_async_dispatch'), 'jax configured on import'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
