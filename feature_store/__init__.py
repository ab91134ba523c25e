"""featurepipe's feature store: batch SQL features into PostgreSQL (offline) and Redis (online).

Plain Python with no Airflow import; the DAGs in `dags/` call these stages one task at a time.
"""

from feature_store.config import Settings
from feature_store.errors import (
    ConnectionFailedError,
    DefinitionError,
    FeatureGroupNotFoundError,
    FeatureNotFoundError,
    FeatureStoreError,
    NotFoundError,
    PipelineError,
    TenantNotFoundError,
    TransformError,
    ValidationError,
    WriteError,
)
from feature_store.jobs import RunInfo
from feature_store.models import (
    FeatureDefinition,
    FeatureGroup,
    HistoricalRow,
    JobStatus,
    JobType,
    MaterializationJob,
    OnlineFeatureRow,
    OnlineValue,
    PipelineConfig,
    PipelineResult,
    Tenant,
    TimeWindow,
    ValidationRules,
    ValueType,
)
from feature_store.pipeline import FeaturePipeline, PlannedJob
from feature_store.store import FeatureStore

__all__ = [
    "ConnectionFailedError",
    "DefinitionError",
    "FeatureDefinition",
    "FeatureGroup",
    "FeatureGroupNotFoundError",
    "FeatureNotFoundError",
    "FeaturePipeline",
    "FeatureStore",
    "FeatureStoreError",
    "HistoricalRow",
    "JobStatus",
    "JobType",
    "MaterializationJob",
    "NotFoundError",
    "OnlineFeatureRow",
    "OnlineValue",
    "PipelineConfig",
    "PipelineError",
    "PipelineResult",
    "PlannedJob",
    "RunInfo",
    "Settings",
    "Tenant",
    "TenantNotFoundError",
    "TimeWindow",
    "TransformError",
    "ValidationError",
    "ValidationRules",
    "ValueType",
    "WriteError",
]
