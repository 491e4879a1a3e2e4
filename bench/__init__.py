"""Benchmarks: each prints its figures; none runs as part of `make test`."""
