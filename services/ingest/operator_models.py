"""The operator API's request and response bodies, with the examples /docs shows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from shared.contracts import Incident, IncidentStatus


class IncidentView(Incident):
    """An incident as the API shows it, with its severity's SEV name."""

    sev: str = Field(description="SEV1 (critical) to SEV4 (info)", examples=["SEV1"])

    @classmethod
    def of(cls, incident: Incident) -> IncidentView:
        return cls.model_validate({**incident.model_dump(), "sev": incident.severity.sev})


class IncidentList(BaseModel):
    incidents: list[IncidentView]


class ActionResult(BaseModel):
    incident: IncidentView
    events: list[str] = Field(description="The incident events this published; [] for a repeat")


_UPDATE_EXAMPLE: dict[str, Any] = {
    "message": "We found a faulty configuration change and are rolling it back.",
    "status": "identified",
    "impact": "Some customers cannot complete checkout.",
    "components": ["checkout"],
    "author": "alice",
}


class UpdateRequest(BaseModel):
    """A human-written update; the optional fields change what customers are told."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [_UPDATE_EXAMPLE]})

    message: str = Field(min_length=1, max_length=5000)
    status: IncidentStatus | None = None
    title: str | None = Field(default=None, min_length=1, max_length=300)
    impact: str | None = Field(default=None, min_length=1, max_length=2000)
    components: list[str] | None = Field(default=None, max_length=100)
    author: str | None = Field(default=None, max_length=200)


class AcknowledgeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"by": "alice"}]})

    by: str | None = Field(default=None, max_length=200)


class ResolveRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"message": "The fix is deployed and errors are gone."}]},
    )

    message: str | None = Field(default=None, min_length=1, max_length=5000)


class PostmortemRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://status.example.com/postmortems/2026-11-23",
                    "summary": "A configuration change overloaded the payment database.",
                }
            ]
        },
    )

    url: HttpUrl
    summary: str | None = Field(default=None, min_length=1, max_length=2000)
