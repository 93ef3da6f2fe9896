"""Operations: the admin API and the Prometheus metrics, reading the planes through a view."""
