"""The scheduler: the one component that owns time.

While an incident is open it emits ``UpdateDue`` events at the cadence of the
incident's severity. Due items live in Redis (a sorted set of due times and a
hash of items) and are claimed with a lease, so several instances never
double-fire and a crashed instance's claim is fired by another.
"""
