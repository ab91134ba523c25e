"""Pydantic models of materialization: windows, job configs and results, jobs, quarantine records."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from feature_store.definitions.models import StrictModel
from feature_store.windows import TimeWindow, require_utc


class JobType(str, enum.Enum):
    FULL = "full"
    INCREMENTAL = "incremental"


class JobStatus(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


# -- Pipeline payloads ---------------------------------------------------------------------------


class PipelineConfig(StrictModel):
    tenant_id: str
    feature_group_id: str
    start_time: datetime
    end_time: datetime
    mode: JobType = JobType.INCREMENTAL
    write_online: bool = True
    write_offline: bool = True
    features: tuple[str, ...] | None = None
    overwrite_online: str | None = Field(default=None, min_length=1)
    """Why this corrective rerun may replace newer online values too (recorded on the job); None: newer-only."""

    _utc_start = field_validator("start_time")(require_utc)
    _utc_end = field_validator("end_time")(require_utc)

    @model_validator(mode="after")
    def _ordered(self) -> PipelineConfig:
        TimeWindow(start=self.start_time, end=self.end_time)
        return self


class FeatureStatus(str, enum.Enum):
    PENDING = "pending"
    TRANSFORMED = "transformed"
    VALIDATED = "validated"
    WRITTEN = "written"
    FAILED = "failed"


class FeatureResult(BaseModel):
    feature: str
    status: FeatureStatus
    rows_processed: int = 0
    rows_failed: int = 0
    error_message: str | None = None


class PipelineResult(BaseModel):
    job_id: int
    tenant_id: str
    feature_group_id: str
    status: JobStatus
    rows_processed: int
    rows_failed: int
    rows_online: int = 0
    duration_ms: int
    errors: list[str] = Field(default_factory=list)
    features: list[FeatureResult] = Field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status is JobStatus.COMPLETED


class MaterializationJob(BaseModel):
    """One row of `feature_store.materialization_jobs`."""

    id: int
    tenant_id: str
    feature_group_id: str
    job_type: JobType
    start_time: datetime
    end_time: datetime
    status: JobStatus
    progress: float
    error_message: str | None
    rows_processed: int
    rows_failed: int
    duration_ms: int | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    dag_id: str | None
    run_id: str | None
    try_number: int | None
    write_online: bool
    write_offline: bool
    features_total: int
    online_overwrite: bool = False
    overwrite_reason: str | None = None


class QuarantinedRow(BaseModel):
    job_id: int
    tenant_id: str
    feature_group_id: str
    feature_name: str
    entity_id: str | None
    event_time: datetime | None
    value: Any
    rule: str
    reason: str
    quarantined_at: datetime


class QuarantineCount(BaseModel):
    """How many rows of one feature one rule rejected, with one of the reasons as an example."""

    feature_group_id: str
    feature_name: str
    rule: str
    rows: int
    tenants: int
    example: str


class ReconcileResult(BaseModel):
    """What `reconcile_online` restored for one (tenant, group)."""

    tenant_id: str
    feature_group_id: str
    entities: int
    values: int


class OnlineCheck(BaseModel):
    """Outcome of `check_online`: the server seen, and what was reconciled because it changed."""

    instance_id: str
    previous_instance_id: str | None
    reconciled: list[ReconcileResult] = Field(default_factory=list)
