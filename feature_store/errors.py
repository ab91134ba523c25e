"""Every failure the feature store reports, one class per kind.

Messages name the tenant / group / feature / rule involved and, where there is one, the fix.
"""

from __future__ import annotations


class FeatureStoreError(Exception):
    """Base class of all feature-store errors."""


# -- Connectivity ------------------------------------------------------------------------------


class ConnectionFailedError(FeatureStoreError):
    """PostgreSQL or Redis could not be reached; says which URL was tried and how to start one."""

    def __init__(self, service: str, url: str, cause: object) -> None:
        hint = {
            "PostgreSQL": "start one with `docker compose up -d postgres` or your distribution's "
            "packages (`pg_ctlcluster <version> main start`), or set FEATURE_STORE_DATABASE_URL",
            "Redis": "start one with `docker compose up -d redis` or `redis-server --daemonize yes`, "
            "or set FEATURE_STORE_REDIS_URL",
        }[service]
        super().__init__(f"cannot connect to {service} at {redact_url(url)}: {cause}. To fix: {hint}.")
        self.service = service
        self.url = url


def redact_url(url: str) -> str:
    """Hide the password of a connection URL so it can be printed."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in creds else url


class SchemaNotInitializedError(FeatureStoreError):
    def __init__(self) -> None:
        super().__init__("the feature_store schema does not exist in this database; run `feature-store init`")


# -- Registry lookups --------------------------------------------------------------------------


class NotFoundError(FeatureStoreError):
    """A registry object does not exist."""


class TenantNotFoundError(NotFoundError):
    def __init__(self, tenant_id: str) -> None:
        super().__init__(f"tenant {tenant_id!r} does not exist; register it in your feature repo and apply")
        self.tenant_id = tenant_id


class FeatureGroupNotFoundError(NotFoundError):
    def __init__(self, group_id: str) -> None:
        super().__init__(f"feature group {group_id!r} does not exist; register it in your feature repo and apply")
        self.group_id = group_id


class FeatureNotFoundError(NotFoundError):
    def __init__(self, group_id: str, feature: str) -> None:
        super().__init__(f"feature {feature!r} does not exist in feature group {group_id!r}")
        self.group_id = group_id
        self.feature = feature


class JobNotFoundError(NotFoundError):
    def __init__(self, job_id: int) -> None:
        super().__init__(f"materialization job {job_id} does not exist")
        self.job_id = job_id


# -- Definitions (feature repo) ----------------------------------------------------------------


class DefinitionError(FeatureStoreError):
    """A feature repo or definition is invalid. Carries every problem found, each with its location."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        head = "invalid feature repo" if len(problems) != 1 else "invalid feature definition"
        super().__init__(f"{head}:\n" + "\n".join(f"  {p}" for p in problems))


# -- Pipeline ----------------------------------------------------------------------------------


class PipelineError(FeatureStoreError):
    """A stage of the pipeline failed for one feature; names tenant, group, feature and stage.

    `retryable` says whether running the stage again could succeed (a lost connection, a deadlock,
    a timeout) or would fail the same way (bad SQL, bad data, too many invalid rows).
    """

    stage = "pipeline"

    def __init__(self, *, tenant_id: str, group_id: str, feature: str, message: str, retryable: bool = False) -> None:
        super().__init__(
            f"{self.stage} failed for tenant {tenant_id!r}, group {group_id!r}, feature {feature!r}: {message}"
        )
        self.tenant_id = tenant_id
        self.group_id = group_id
        self.feature = feature
        self.detail = message
        self.retryable = retryable


class TransformError(PipelineError):
    stage = "transform"


class ValidationError(PipelineError):
    """Too many rows of one feature broke its rules (more than the group's max_failure_rate)."""

    stage = "validate"


class WriteError(PipelineError):
    stage = "write"


class FinishError(FeatureStoreError):
    """Ending a job failed (publishing its values online, usually); names the job and its tenant/group.

    `retryable` as for PipelineError: Redis or PostgreSQL unreachable is worth a retry, a job that
    cannot be finished as asked (no online store) is not.
    """

    def __init__(
        self, *, job_id: int, tenant_id: str | None, group_id: str | None, message: str, retryable: bool = False
    ) -> None:
        owner = f" (tenant {tenant_id!r}, group {group_id!r})" if tenant_id and group_id else ""
        super().__init__(f"finish failed for job {job_id}{owner}: {message}")
        self.job_id = job_id
        self.detail = message
        self.retryable = retryable


class JobStateError(FeatureStoreError):
    """A job was asked to do something its state does not allow (e.g. run a feature of a finished job)."""
