"""Monitoring sources: one module per tool, each turning its webhook body into alerts.

Every source module has the same shape:

* ``SOURCE``: the source's name, used in group keys, metrics, logs, settings
  (``CLARION_<SOURCE>_TOKEN``) and severity overrides (the plan's ``source_severities``).
* ``SEVERITIES``: a :class:`services.ingest.severity.SeverityMap` of the tool's
  severity words, with the level for words it doesn't know.
* A frozen pydantic model of the request body. Unknown (newer) fields are ignored;
  missing or wrong required fields fail validation, which ingest answers with a
  422 naming the field.
* ``parse(payload, severities=SEVERITIES) -> list[Alert]``: pure (no I/O, no
  clock). Every alert's ``group_key`` is ``"<SOURCE>:<sha256 hex>"`` of the
  tool's own grouping, so it is safe in a Redis key name; its ``fingerprint`` is
  stable across resends of the same alert.
"""
