"""Helpers the test fixtures are built from: real servers, worker processes, and waiting on
conditions with a deadline. Import them as `tests.support.<module>`."""
