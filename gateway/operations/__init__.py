"""Operations: the admin listener and dashboard, Prometheus metrics, tracing, the live view ``plan --from`` reads."""
