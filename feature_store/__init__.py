"""featurepipe's feature store: batch SQL features into PostgreSQL (offline) and Redis (online).

Plain Python with no Airflow import; the DAGs in `dags/` call its stages one task at a time. The
data path, module by module: definitions (what a repo declares, apply, registry) -> sources (what
transforms may read) -> pipeline (sandboxed transform, validate, write, publish, jobs) -> stores
(offline in PostgreSQL, online in Redis or Redis Cluster) -> serving (reads) and monitoring.
"""

from feature_store.config import Settings
from feature_store.definitions.apply import ApplyReport
from feature_store.definitions.models import (
    FeatureDefinition,
    FeatureGroup,
    SourceTable,
    Tenant,
    TenantGroup,
    TenantGroupSettings,
    ValidationRules,
    ValueType,
)
from feature_store.errors import (
    ConfigurationError,
    ConnectionFailedError,
    DatabaseNotFoundError,
    DefinitionError,
    FeatureGroupDisabledError,
    FeatureGroupNotFoundError,
    FeatureNotFoundError,
    FeatureStoreError,
    FinishError,
    InvalidInputError,
    JobNotFoundError,
    JobStateError,
    NotFoundError,
    OnlineStoreLostDataError,
    PipelineError,
    SchemaNotInitializedError,
    SourceIsolationError,
    StatementTimeoutError,
    TenantNotFoundError,
    TransformError,
    ValidationFailedError,
    WindowError,
    WriteError,
)
from feature_store.pipeline.jobs import RunInfo
from feature_store.pipeline.models import (
    JobStatus,
    JobType,
    MaterializationJob,
    OnlineCheck,
    PipelineConfig,
    PipelineResult,
    QuarantineCount,
    QuarantinedRow,
    ReconcileResult,
)
from feature_store.pipeline.stages import FeaturePipeline, PlannedJob
from feature_store.serving.models import HistoricalRow, OnlineFeatureRow, OnlineFeatures, OnlineValue, OnlineValueStatus
from feature_store.store import FeatureStore
from feature_store.stores.online.base import OnlineStore, OnlineWrite
from feature_store.windows import TimeWindow

__all__ = [
    "ApplyReport",
    "ConfigurationError",
    "ConnectionFailedError",
    "DatabaseNotFoundError",
    "DefinitionError",
    "FeatureDefinition",
    "FeatureGroup",
    "FeatureGroupDisabledError",
    "FeatureGroupNotFoundError",
    "FeatureNotFoundError",
    "FeaturePipeline",
    "FeatureStore",
    "FeatureStoreError",
    "FinishError",
    "HistoricalRow",
    "InvalidInputError",
    "JobNotFoundError",
    "JobStateError",
    "JobStatus",
    "JobType",
    "MaterializationJob",
    "NotFoundError",
    "OnlineCheck",
    "OnlineFeatureRow",
    "OnlineFeatures",
    "OnlineStore",
    "OnlineStoreLostDataError",
    "OnlineValue",
    "OnlineValueStatus",
    "OnlineWrite",
    "PipelineConfig",
    "PipelineError",
    "PipelineResult",
    "PlannedJob",
    "QuarantineCount",
    "QuarantinedRow",
    "ReconcileResult",
    "RunInfo",
    "SchemaNotInitializedError",
    "Settings",
    "SourceIsolationError",
    "SourceTable",
    "StatementTimeoutError",
    "Tenant",
    "TenantGroup",
    "TenantGroupSettings",
    "TenantNotFoundError",
    "TimeWindow",
    "TransformError",
    "ValidationFailedError",
    "ValidationRules",
    "ValueType",
    "WindowError",
    "WriteError",
]
