"""The Prometheus metrics the gateway exports on /metrics."""
