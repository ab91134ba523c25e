"""Pydantic models of what a feature repo declares: tenants, feature groups, features, rules, sources."""

from __future__ import annotations

import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_core import PydanticCustomError

# Tenant, group and feature ids end up in Redis keys and log lines: keep them to a safe alphabet.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,62}$"
Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]


class StrictModel(BaseModel):
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

    def accepts(self, value: object) -> bool:
        """Whether a Python value is of this type (a bool is no number; an int is a float64)."""
        if self is ValueType.BOOL:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self is ValueType.INT64:
            return isinstance(value, int)
        if self is ValueType.FLOAT64:
            return isinstance(value, int | float)
        return isinstance(value, str)


# -- Registry definitions ----------------------------------------------------------------------


class Tenant(StrictModel):
    id: Identifier
    name: str = Field(min_length=1)
    status: Status = Status.ACTIVE


class ValidationRules(StrictModel):
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


class SourceTable(StrictModel):
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


class AggregationFunction(str, enum.Enum):
    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"
    LAST = "last"
    APPROX_COUNT_DISTINCT = "approx_count_distinct"


class EmptyWindow(str, enum.Enum):
    """What a window without any source row reads: 0, or no value (null offline, null online)."""

    ZERO = "zero"
    MISSING = "missing"


# Window lengths in whole hours or days: the tiles are hourly.
WINDOW_LENGTH_PATTERN = r"^[1-9][0-9]{0,3}[hd]$"
WindowLength = Annotated[str, StringConstraints(pattern=WINDOW_LENGTH_PATTERN)]
MAX_WINDOW_HOURS = 24 * 366

# The value types each aggregation may declare (sum, min, max and last keep the type of what they aggregate).
_AGGREGATION_TYPES: dict[AggregationFunction, tuple[ValueType, ...]] = {
    AggregationFunction.COUNT: (ValueType.INT64,),
    AggregationFunction.APPROX_COUNT_DISTINCT: (ValueType.INT64,),
    AggregationFunction.AVG: (ValueType.FLOAT64,),
    AggregationFunction.SUM: (ValueType.INT64, ValueType.FLOAT64),
    AggregationFunction.MIN: (ValueType.INT64, ValueType.FLOAT64),
    AggregationFunction.MAX: (ValueType.INT64, ValueType.FLOAT64),
    AggregationFunction.LAST: tuple(ValueType),
}


class Aggregation(StrictModel):
    """A sliding-window aggregation of the `value` column of a feature's SQL, combined from hourly tiles.

    The SQL returns the source rows of one hour (`entity_id, value[, event_time]`, not aggregated);
    each run stores that hour's partial aggregates per entity, and the feature's value at every hour
    end T is combined from the tiles of the hours in (T - window, T].
    """

    function: AggregationFunction
    window: WindowLength
    empty: EmptyWindow = EmptyWindow.MISSING
    """What an entity whose window holds no source rows reads (`zero` only for count, sum and distinct counts)."""

    @property
    def hours(self) -> int:
        n = int(self.window[:-1])
        return n * 24 if self.window.endswith("d") else n

    @model_validator(mode="after")
    def _valid(self) -> Aggregation:
        if self.hours > MAX_WINDOW_HOURS:
            raise ValueError(f"window {self.window} is longer than {MAX_WINDOW_HOURS // 24}d")
        zero_ok = (AggregationFunction.COUNT, AggregationFunction.SUM, AggregationFunction.APPROX_COUNT_DISTINCT)
        if self.empty is EmptyWindow.ZERO and self.function not in zero_ok:
            raise ValueError(
                f"empty: zero is for {', '.join(f.value for f in zero_ok)}; a {self.function.value} of no rows"
                " is missing"
            )
        return self


FUNCTION_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
FunctionName = Annotated[str, StringConstraints(pattern=FUNCTION_NAME_PATTERN)]
"""`module:callable`, the module a `.py` file of the feature repo's folder (`pkg.module` for `pkg/module.py`)."""


class StreamOp(str, enum.Enum):
    """How an event changes a stream feature, server-side and atomically."""

    COUNT = "count"
    """Add 1 (or the payload `field`'s number) to the stored value (0 when none)."""
    EWMA = "ewma"
    """Exponentially weighted average of the payload `field`: alpha * x + (1 - alpha) * previous (0 when none)."""
    SET = "set"
    """The payload `field`'s value (or `default` when the event has none), newer-only by event time."""


class StreamMapping(StrictModel):
    """Which event updates a stream feature, for which of the event's ids, and how."""

    event: str = Field(min_length=1)
    """Event type, e.g. `message.created` (see feature_store.stream.events.EVENT_TYPES)."""
    entity: str = Field(min_length=1)
    """The event's id field naming the entity, e.g. `conversation_id`."""
    op: StreamOp
    field: str | None = None
    """Payload field the value comes from (required for ewma and set)."""
    alpha: float = Field(default=0.3, gt=0.0, le=1.0)
    """EWMA weight of the newest value."""
    default: str | int | float | bool | None = None
    """Value of `set` when the event leaves the field out (else the payload model's default)."""

    @model_validator(mode="after")
    def _field_when_needed(self) -> StreamMapping:
        if self.op in (StreamOp.EWMA, StreamOp.SET) and not self.field:
            raise ValueError(f"op {self.op.value} needs the payload field it reads")
        return self


class OnDemandSpec(StrictModel):
    """An on-demand feature: a Python function over other features of the same entity and request data."""

    function: FunctionName
    """`package.module:function`, importable wherever features are read; called per entity as
    `function(features, request)` with dicts keyed by input feature name and request field."""
    inputs: list[Annotated[str, StringConstraints(pattern=r"^[^:]+:[^:]+$")]] = Field(default_factory=list)
    """`group:feature` references of stored (batch or stream) features of the same entity type."""
    request_data: list[Identifier] = Field(default_factory=list)
    """Fields the read's request data must carry."""


class FeatureDefinition(StrictModel):
    name: Identifier
    description: str = ""
    source_type: SourceType = SourceType.BATCH
    value_type: ValueType
    transformation_sql: str | None = None
    validation: ValidationRules = ValidationRules()
    status: Status = Status.ACTIVE
    stream: StreamMapping | None = None
    """For stream features: the event that updates it (the event -> feature mapping lives in the repo)."""
    on_demand: OnDemandSpec | None = None
    """For on-demand features: the function computing it at read time, and its inputs."""

    aggregation: Aggregation | None = None
    """A sliding-window aggregation of the SQL's rows (see Aggregation)."""

    function: FunctionName | None = None
    """A Python function over batches of the SQL's rows, yielding (entity_id, value[, event_time])."""

    function_source: str | None = Field(default=None, repr=False)
    """The function's module source, read from the repo at load time: every worker runs what was applied."""

    @field_validator("transformation_sql")
    @classmethod
    def _stripped(cls, sql: str | None) -> str | None:
        return _strip_sql(sql)

    @model_validator(mode="after")
    def _consistent(self) -> FeatureDefinition:
        # A batch feature without SQL reads a column of its group's (see FeatureGroup); these need their own.
        if not self.transformation_sql and (self.aggregation is not None or self.function is not None):
            kind = "window aggregation" if self.aggregation is not None else "function"
            raise ValueError(f"a {kind} feature needs a transformation_sql of its own")
        if self.source_type is not SourceType.BATCH and self.transformation_sql:
            raise ValueError(f"transformation_sql is only for batch features, not {self.source_type.value}")
        if self.stream is not None:
            if self.source_type is not SourceType.STREAM:
                raise ValueError(f"stream (an event mapping) is only for stream features, not {self.source_type.value}")
            _check_stream_type(self.stream, self.value_type)
        if self.source_type is SourceType.ON_DEMAND and self.on_demand is None:
            raise ValueError("an on_demand feature needs on_demand: {function: 'module:function', inputs: [...]}")
        if self.on_demand is not None and self.source_type is not SourceType.ON_DEMAND:
            raise ValueError(f"on_demand is only for on_demand features, not {self.source_type.value}")
        if self.aggregation is not None and self.function is not None:
            raise ValueError("a feature is either a window aggregation or a function, not both")
        if self.aggregation is not None and self.value_type not in _AGGREGATION_TYPES[self.aggregation.function]:
            declared = ", ".join(t.value for t in _AGGREGATION_TYPES[self.aggregation.function])
            raise ValueError(
                f"a {self.aggregation.function.value} aggregation has value_type {declared},"
                f" not {self.value_type.value}"
            )
        if self.function is not None and self.function_source is None:
            raise ValueError(f"function {self.function} has no source (is its module in the repo's folder?)")
        rules = self.validation
        if (rules.min is not None or rules.max is not None) and not self.value_type.is_numeric:
            raise ValueError(f"min/max rules need a numeric value_type, not {self.value_type.value}")
        for allowed in rules.allowed_values or []:
            if not self.value_type.accepts(allowed):
                raise ValueError(f"allowed value {allowed!r} is not of value_type {self.value_type.value}")
        return self


def _strip_sql(sql: str | None) -> str | None:
    """SQL without surrounding blanks and trailing semicolons (None when nothing is left)."""
    if sql is None:
        return None
    sql = sql.strip()
    while sql.endswith(";"):
        sql = sql[:-1].rstrip()
    return sql or None


def _check_stream_type(mapping: StreamMapping, value_type: ValueType) -> None:
    if mapping.op is StreamOp.COUNT and not value_type.is_numeric:
        raise ValueError(f"op count needs a numeric value_type, not {value_type.value}")
    if mapping.op is StreamOp.EWMA and value_type is not ValueType.FLOAT64:
        raise ValueError(f"op ewma needs value_type float64, not {value_type.value}")
    if mapping.default is not None and not value_type.accepts(mapping.default):
        raise ValueError(f"default {mapping.default!r} is not of value_type {value_type.value}")


class FeatureGroup(StrictModel):
    """Features of one entity type that are materialized together, with shared storage settings."""

    id: Identifier
    entity_type: Identifier
    tenant: Identifier | None = None
    """The tenant owning the group (only it plans, reads or sees it); None: shared by every tenant."""

    description: str = ""
    online_enabled: bool = True
    offline_enabled: bool = True
    ttl_seconds: int | None = Field(default=None, gt=0)
    status: Status = Status.ACTIVE
    max_failure_rate: float = Field(default=0.05, ge=0.0, le=1.0)
    freshness_target_seconds: int | None = Field(default=None, gt=0)
    transformation_sql: str | None = None
    """One SQL for the group's batch features that have none of their own: it returns entity_id,
    [event_time,] and a column named after each such feature, and runs once per job (see transform)."""

    features: tuple[FeatureDefinition, ...] = ()

    @field_validator("transformation_sql")
    @classmethod
    def _stripped(cls, sql: str | None) -> str | None:
        return _strip_sql(sql)

    @field_validator("features")
    @classmethod
    def _unique_names(cls, features: tuple[FeatureDefinition, ...]) -> tuple[FeatureDefinition, ...]:
        seen: set[str] = set()
        for feature in features:
            if feature.name in seen:
                raise ValueError(f"feature {feature.name!r} is defined twice")
            seen.add(feature.name)
        return features

    @model_validator(mode="after")
    def _batch_features_have_sql(self) -> FeatureGroup:
        if self.transformation_sql is None:
            for i, feature in enumerate(self.features):
                if self.reads_group_sql(feature):
                    # `feature` in the context: the repo's messages point at the feature, not the group.
                    raise PydanticCustomError(
                        "feature_without_sql",
                        "a batch feature needs transformation_sql: its own, or the group's (returning a column"
                        " named after the feature)",
                        {"feature": i},
                    )
        return self

    def feature(self, name: str) -> FeatureDefinition | None:
        return next((f for f in self.features if f.name == name), None)

    @staticmethod
    def reads_group_sql(feature: FeatureDefinition) -> bool:
        """Whether the feature's values are a column of the group's SQL (a batch feature without SQL)."""
        return feature.source_type is SourceType.BATCH and feature.transformation_sql is None

    @property
    def group_sql_features(self) -> tuple[FeatureDefinition, ...]:
        """Active batch features whose values are columns of the group's SQL."""
        return tuple(f for f in self.batch_features if self.reads_group_sql(f))

    @property
    def batch_features(self) -> tuple[FeatureDefinition, ...]:
        return tuple(f for f in self.features if f.source_type is SourceType.BATCH and f.status is Status.ACTIVE)

    @property
    def stream_features(self) -> tuple[FeatureDefinition, ...]:
        """Active stream features that an event mapping feeds."""
        return tuple(
            f
            for f in self.features
            if f.source_type is SourceType.STREAM and f.status is Status.ACTIVE and f.stream is not None
        )


# -- Tenant scope ------------------------------------------------------------------------------


class TenantGroupSettings(StrictModel):
    """One tenant's settings of a shared group: switched off, or overriding what makes sense per tenant.

    None keeps the group's own value.
    """

    enabled: bool = True
    online_enabled: bool | None = None
    offline_enabled: bool | None = None
    ttl_seconds: int | None = Field(default=None, gt=0)
    max_failure_rate: float | None = Field(default=None, ge=0.0, le=1.0)
    freshness_target_seconds: int | None = Field(default=None, gt=0)

    def overrides(self) -> dict[str, Any]:
        """The settings that differ from the group's own, as stored and shown."""
        return self.model_dump(mode="json", exclude_none=True, exclude={"enabled"})


class TenantGroup(StrictModel):
    """What one tenant sees of one group: whether it is shared or the tenant's own, enabled, overridden."""

    tenant_id: str
    feature_group_id: str
    scope: Literal["shared", "owned"]
    enabled: bool
    status: Status
    overrides: dict[str, Any] = Field(default_factory=dict)
