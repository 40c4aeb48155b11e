"""The embedded development stack: real NATS, PostgreSQL and localstripe servers run as
child processes on 127.0.0.1 (for `jetsaga up` and for the test fixtures)."""
