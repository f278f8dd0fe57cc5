"""Kafka helpers outside the processor's hot loop: topic administration and reading a topic to
its end (`topics`, the only place aiokafka's private calls are made), model announcements
(`announcements`), client tuning applied by an explicit call (`tuning`), reconnecting with
backoff (`reconnect`), and the local development broker (`local`).

May import aiokafka, `settings` and `model`; never `serve`, `feed`, `jobs`, `tools` or `cli`.
"""
