"""jetsaga: a saga orchestrator for e-commerce orders on NATS JetStream and PostgreSQL."""
