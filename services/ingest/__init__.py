"""Ingest: monitoring webhooks in, incidents and incident events out (to Redis, atomically)."""
