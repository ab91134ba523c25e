"""featurepipe's feature store: batch SQL features into PostgreSQL (offline) and Redis (online).

Plain Python with no Airflow import; the DAGs in `dags/` call these stages one task at a time.
"""

from feature_store.config import Settings
from feature_store.definitions.models import FeatureDefinition, FeatureGroup, Tenant, ValidationRules, ValueType
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
from feature_store.pipeline.jobs import RunInfo
from feature_store.pipeline.models import (
    JobStatus,
    JobType,
    MaterializationJob,
    PipelineConfig,
    PipelineResult,
    TimeWindow,
)
from feature_store.pipeline.stages import FeaturePipeline, PlannedJob
from feature_store.serving.models import HistoricalRow, OnlineFeatureRow, OnlineValue
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
