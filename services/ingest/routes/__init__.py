"""Ingest's HTTP routes: webhooks in, the operator API, health."""
