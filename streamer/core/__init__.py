"""The pure core of the stream: tick and forecast wire formats, the engine, hot-swap rounds,
the state-record codec and checkpoint planning.

Synchronous and network-free: may import `model`, numpy, orjson and the standard library;
never asyncio, aiokafka, websockets or any other `streamer` sub-package. Everything here is
tested without a broker or a socket.
"""
