"""HTTP layer: routers per protocol, shared dependencies, error mapping."""
