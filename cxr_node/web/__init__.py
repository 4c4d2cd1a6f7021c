"""The node's read-only HTTP side: status page, /metrics, /healthz, /readyz."""
