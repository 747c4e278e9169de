"""gRPC services: the orchestrator and the scorecard, their clients and shared serving plumbing."""
