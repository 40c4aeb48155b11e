"""Fixtures of the integration tests: a nats-server and a database of the test's own."""

from tests.support.bus import bus, pool

__all__ = ["bus", "pool"]
