"""Wiring: gRPC services, job state machine, worker processes, DB, CLI."""
