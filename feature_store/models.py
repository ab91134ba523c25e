"""Pydantic models for every definition and payload the feature store handles."""

from __future__ import annotations

import enum
import itertools
from datetime import datetime, timedelta, timezone
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from feature_store.types import FeatureValue

# Tenant, group and feature ids end up in Redis keys and log lines: keep them to a safe alphabet.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]


class _Strict(BaseModel):
    """Unknown keys are errors: a typo in a feature repo must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Status(str, enum.Enum):
    ACTIVE = "active"
    INACTIVE = "inactive"


class SourceType(str, enum.Enum):
    BATCH = "batch"
    STREAM = "stream"
    ON_DEMAND = "on_demand"


class ValueType(str, enum.Enum):
    INT64 = "int64"
    FLOAT64 = "float64"
    STRING = "string"
    BOOL = "bool"

    @property
    def is_numeric(self) -> bool:
        return self in (ValueType.INT64, ValueType.FLOAT64)


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


# -- Registry definitions ----------------------------------------------------------------------


class Tenant(_Strict):
    id: Identifier
    name: str = Field(min_length=1)
    status: Status = Status.ACTIVE


class ValidationRules(_Strict):
    """Row-level rules checked set-wise in PostgreSQL; a failing row is quarantined with the rule's name."""

    not_null: bool = False
    min: float | None = None
    max: float | None = None
    allowed_values: list[str | int | float | bool] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ValidationRules:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min:g}) is greater than max ({self.max:g})")
        return self


QUALIFIED_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,62}\.[a-z_][a-z0-9_]{0,62}$"
QualifiedName = Annotated[str, StringConstraints(pattern=QUALIFIED_NAME_PATTERN)]
"""`schema.table`, lower case, as PostgreSQL folds unquoted names."""

ColumnName = Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]


class SourceTable(_Strict):
    """A source table declared in the repo: shared across tenants on purpose, or checked on the way in.

    Expectations are rules on the table's own rows (not on feature values): PostgreSQL hides rows that
    break them from every transform, and each transform quarantines the ones in its window with the
    reason, so a broken rating is never averaged into a feature.
    """

    table: QualifiedName
    shared: bool = False
    """Every tenant's transforms read all of its rows (e.g. a plans or country table), on purpose."""

    tenant_column: ColumnName | None = None
    """Column holding the tenant id; needed for expectations (to quarantine one tenant's rows)."""

    time_column: ColumnName | None = None
    """Column whose time puts a row in a window; needed for expectations."""

    key_column: ColumnName = "id"
    """Column identifying a row in quarantine records."""

    expectations: dict[ColumnName, ValidationRules] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _expectations_need_columns(self) -> SourceTable:
        if self.expectations:
            if self.shared:
                raise ValueError("expectations are checked per tenant; a shared table cannot have them")
            missing = [name for name in ("tenant_column", "time_column") if getattr(self, name) is None]
            if missing:
                raise ValueError(f"expectations need {' and '.join(missing)}")
        return self

    def expectations_data(self) -> dict[str, Any]:
        """The expectations as stored in the registry (and compared with it)."""
        return {c: r.model_dump(mode="json", exclude_defaults=True) for c, r in self.expectations.items()}


class FeatureDefinition(_Strict):
    name: Identifier
    description: str = ""
    source_type: SourceType = SourceType.BATCH
    value_type: ValueType
    transformation_sql: str | None = None
    validation: ValidationRules = ValidationRules()
    status: Status = Status.ACTIVE

    @field_validator("transformation_sql")
    @classmethod
    def _strip_sql(cls, sql: str | None) -> str | None:
        if sql is None:
            return None
        sql = sql.strip()
        while sql.endswith(";"):
            sql = sql[:-1].rstrip()
        return sql or None

    @model_validator(mode="after")
    def _consistent(self) -> FeatureDefinition:
        if self.source_type is SourceType.BATCH and not self.transformation_sql:
            raise ValueError("a batch feature needs transformation_sql")
        if self.source_type is not SourceType.BATCH and self.transformation_sql:
            raise ValueError(f"transformation_sql is only for batch features, not {self.source_type.value}")
        rules = self.validation
        if (rules.min is not None or rules.max is not None) and not self.value_type.is_numeric:
            raise ValueError(f"min/max rules need a numeric value_type, not {self.value_type.value}")
        for allowed in rules.allowed_values or []:
            if not _matches_type(allowed, self.value_type):
                raise ValueError(f"allowed value {allowed!r} is not of value_type {self.value_type.value}")
        return self


def _matches_type(value: object, value_type: ValueType) -> bool:
    if value_type is ValueType.BOOL:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if value_type is ValueType.INT64:
        return isinstance(value, int)
    if value_type is ValueType.FLOAT64:
        return isinstance(value, int | float)
    return isinstance(value, str)


class FeatureGroup(_Strict):
    """Features of one entity type that are materialized together, with shared storage settings."""

    id: Identifier
    entity_type: Identifier
    description: str = ""
    online_enabled: bool = True
    offline_enabled: bool = True
    ttl_seconds: int | None = Field(default=None, gt=0)
    status: Status = Status.ACTIVE
    max_failure_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    freshness_target_seconds: int | None = Field(default=None, gt=0)
    features: tuple[FeatureDefinition, ...] = ()

    @field_validator("features")
    @classmethod
    def _unique_names(cls, features: tuple[FeatureDefinition, ...]) -> tuple[FeatureDefinition, ...]:
        seen: set[str] = set()
        for feature in features:
            if feature.name in seen:
                raise ValueError(f"feature {feature.name!r} is defined twice")
            seen.add(feature.name)
        return features

    def feature(self, name: str) -> FeatureDefinition | None:
        return next((f for f in self.features if f.name == name), None)

    @property
    def batch_features(self) -> tuple[FeatureDefinition, ...]:
        return tuple(f for f in self.features if f.source_type is SourceType.BATCH and f.status is Status.ACTIVE)


# -- Pipeline payloads ---------------------------------------------------------------------------


def _require_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamps must carry a time zone (e.g. 2026-01-01T00:00:00Z)")
    return value.astimezone(timezone.utc)


SCHEDULE = timedelta(hours=1)
"""The DAG's schedule: windows of one hour, on whole hours."""


class TimeWindow(_Strict):
    """A materialization window `(start, end]`: a window owns the feature rows stamped inside it."""

    start: datetime
    end: datetime

    _utc_start = field_validator("start")(_require_utc)
    _utc_end = field_validator("end")(_require_utc)

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.start >= self.end:
            raise ValueError(f"window start {self.start.isoformat()} is not before end {self.end.isoformat()}")
        return self

    def schedule_windows(self) -> list[TimeWindow]:
        """This window cut at every whole hour (the DAG's schedule), oldest first: what full mode recomputes."""
        cuts = [self.start]
        hour = self.start.replace(minute=0, second=0, microsecond=0) + SCHEDULE
        while hour < self.end:
            cuts.append(hour)
            hour += SCHEDULE
        cuts.append(self.end)
        return [TimeWindow(start=a, end=b) for a, b in itertools.pairwise(cuts)]

    def schedule_window_count(self) -> int:
        """How many schedule windows `schedule_windows` returns, without building them."""
        first = self.start.replace(minute=0, second=0, microsecond=0) + SCHEDULE
        if first >= self.end:
            return 1
        return 2 + int((self.end - first - timedelta(microseconds=1)) // SCHEDULE)

    @classmethod
    def last_complete_hour(cls, now: datetime | None = None) -> TimeWindow:
        end = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).replace(minute=0, second=0, microsecond=0)
        return cls(start=end - timedelta(hours=1), end=end)


class PipelineConfig(_Strict):
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

    _utc_start = field_validator("start_time")(_require_utc)
    _utc_end = field_validator("end_time")(_require_utc)

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


# -- Reads ---------------------------------------------------------------------------------------


class OnlineValueStatus(str, enum.Enum):
    PRESENT = "present"
    MISSING = "missing"
    EXPIRED = "expired"


class OnlineValue(BaseModel):
    value: FeatureValue = None
    event_time: datetime | None = None
    status: OnlineValueStatus = OnlineValueStatus.MISSING


class OnlineFeatureRow(BaseModel):
    """One requested entity: a value (or an explicit missing marker) for every requested feature."""

    entity_id: str
    features: dict[str, OnlineValue]


class HistoricalRow(BaseModel):
    """One training row: the latest value of each feature at or before `timestamp` (never after)."""

    entity_id: str
    timestamp: datetime
    values: dict[str, FeatureValue]
    event_times: dict[str, datetime | None]


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
