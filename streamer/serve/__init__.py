"""`tickcast serve`: the asyncio + aiokafka shell around the core.

`processor` (the Kafka stream processor: session, batch loop, rebalance), `recovery`
(a partition restored from the state topic), `publish` (the per-batch transactional commit),
`follower` (model announcements → hot swap) and `service` (the whole instance: processor,
feed, metrics endpoint, follower). May import `core`, `feed`, `kafka`, `metrics`,
`settings`, `lifecycle` and `model`; nothing imports it but `jobs.run_local` and the CLI.
"""
