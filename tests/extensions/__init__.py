"""What the server adds around the protocol: tus extensions, hooks, metrics, health, logs, Flask."""
