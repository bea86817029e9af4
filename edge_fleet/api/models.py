"""Request bodies, validated by FastAPI (a wrong type or an unknown field is a 422 naming it)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DeployBody(BaseModel):
    """`edge-fleet deploy` as JSON: exactly one of devices or group."""

    model_config = ConfigDict(extra="forbid")

    bundle: str = Field(..., description="NAME:VERSION, e.g. digits:2", examples=["digits:2"], max_length=200)
    devices: list[str] | None = Field(None, description="device ids", max_length=10000)
    group: str | None = Field(None, max_length=64)
    stages: str = Field("5,25,100", description="cumulative percentages ending at 100", max_length=200)
    max_failures: str = Field("0", description="a count (2) or a fraction (0.1, 10%)", max_length=20)
    stage_timeout: float = Field(900.0, gt=0, le=7 * 86400, description="seconds per device")
    stage_soak: float = Field(0.0, ge=0, le=7 * 86400, description="seconds on the new bundle before the next stage")
    source_url: str | None = Field(None, description="HTTP(S) download URL template ({sha256}, {name}, ...)",
                                   max_length=2000)
    min_shadow_agreement: float | None = Field(None, ge=0, le=1, description="shadow gate: before switching, the "
                                               "new model must agree with the active one on this share of live frames")
    shadow_frames: int = Field(300, ge=1, le=100000, description="live frames the shadow run compares")
    shadow_timeout: float = Field(300.0, gt=0, le=86400, description="seconds a device waits for live frames")


class GroupBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str | None = Field(..., description="the group, or null for none", max_length=64)


class TokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., max_length=64, examples=["ci-pipeline"])
    role: Literal["viewer", "operator", "admin"]
