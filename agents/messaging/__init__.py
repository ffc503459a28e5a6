"""What every service runs around its step: unit of work, consumer loop, batching, relay,
dead letters, Kafka clients and transport, the app factory and worker. Imports no service."""
