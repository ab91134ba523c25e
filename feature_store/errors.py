"""Every failure the feature store reports, one class per kind.

Messages name the tenant / group / feature / rule involved and, where there is one, the fix.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

from psycopg.conninfo import conninfo_to_dict


class FeatureStoreError(Exception):
    """Base class of all feature-store errors.

    `retryable` says whether doing the same again could succeed (a lost connection, a deadlock, a
    timeout, a restarted Redis) or would fail the same way (bad SQL, bad data, a bad setting).
    """

    retryable: bool = False


# -- Configuration and connectivity ------------------------------------------------------------


class ConfigurationError(FeatureStoreError):
    """A setting (e.g. FEATURE_STORE_DATABASE_URL) has a value the feature store cannot use.

    Names the setting, shows its value with any password hidden, says what is wrong and the fix.
    """

    def __init__(self, setting: str, value: str, problem: str, fix: str) -> None:
        problem = redact_secrets(problem, value).rstrip(". ")
        super().__init__(f"{setting} {redact_url(value)!r} is invalid: {problem}. To fix: {fix}.")
        self.setting = setting


_START_HINTS = {
    "PostgreSQL": "start one with `docker compose up -d postgres` or your distribution's "
    "packages (`pg_ctlcluster <version> main start`), or set FEATURE_STORE_DATABASE_URL",
    "Redis": "start one with `docker compose up -d redis` or `redis-server --daemonize yes`, "
    "or set FEATURE_STORE_REDIS_URL",
}


class ConnectionFailedError(FeatureStoreError):
    """PostgreSQL or Redis could not be reached; says which URL was tried and how to start one."""

    retryable = True

    def __init__(self, service: str, url: str, cause: object, *, hint: str | None = None) -> None:
        hint = hint or _START_HINTS[service]
        cause = redact_secrets(str(cause), url).rstrip(". ")
        super().__init__(f"cannot connect to {service} at {redact_url(url)}: {cause}. To fix: {hint}.")
        self.service = service
        self.url = redact_url(url)


class DatabaseNotFoundError(ConnectionFailedError):
    """The PostgreSQL server answers, but the database named in the URL does not exist (yet)."""

    retryable = False

    def __init__(self, url: str, dbname: str) -> None:
        super().__init__(
            "PostgreSQL",
            url,
            f"database {dbname!r} does not exist",
            hint="run `feature-store init`, which creates it (or correct the database name in "
            "FEATURE_STORE_DATABASE_URL)",
        )
        self.dbname = dbname


# Where passwords sit in connection strings: URI user info (`scheme://user:pw@host`), URI query
# parameters (`?password=pw`) and libpq key=value pairs (`password=pw`, `password='p w'`).
_URI_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)([^&#]*)")
_KV_PASSWORD = re.compile(r"(\b(?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|\S+)")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (drivers' messages can run to several lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def redact_url(url: str) -> str:
    """Hide the passwords of a connection string, URI or key=value form, so it can be printed."""
    match = _URI_SCHEME.match(url)
    if not match:
        password = _KV_PASSWORD.search(url)
        if password and not _readable(url):  # where the password ends is unknown: hide all that follows
            return url[: password.start(2)] + "***"
        return _KV_PASSWORD.sub(r"\1***", url)
    scheme, rest = match.group(), url[match.end() :]
    creds, at, host = rest.rpartition("@")
    if at and ":" in creds:
        rest = f"{creds.split(':', 1)[0]}:***@{host}"
    return scheme + _QUERY_PASSWORD.sub(r"\1***", rest)


def _readable(url: str) -> bool:
    """Whether libpq can split `url` into its parameters."""
    try:
        conninfo_to_dict(url)
    except Exception:
        return False
    return True


def redact_secrets(text: str, url: str) -> str:
    """`text` (e.g. a driver's error message about `url`) without any password of `url` in it."""
    secrets: set[str] = set()
    match = _URI_SCHEME.match(url)
    if match:
        creds, at, _ = url[match.end() :].rpartition("@")
        if at and ":" in creds:
            secrets.add(creds.split(":", 1)[1])
        secrets.update(m.group(2) for m in _QUERY_PASSWORD.finditer(url))
    else:
        for m in _KV_PASSWORD.finditer(url):
            secrets.update((m.group(2), m.group(2).strip("'")))
    secrets.update([unquote(s) for s in secrets] + [unquote_plus(s) for s in secrets])
    if _readable(url):
        parsed = conninfo_to_dict(url)
        secrets.update(str(parsed[k]) for k in ("password", "sslpassword") if parsed.get(k))
    elif re.search(r"password", url, re.IGNORECASE):  # libpq's messages may quote any part of it
        text = re.sub(r'"([^"]*)"', lambda m: m.group() if m.group(1) == "=" else '"***"', text)
    if url:
        text = text.replace(url, redact_url(url))
    for secret in sorted((s for s in secrets if s and s != "***"), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


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
    """No such group, or (with `tenant_id`) none that tenant can see: another tenant's group reads the same."""

    def __init__(self, group_id: str, tenant_id: str | None = None) -> None:
        scope = f" for tenant {tenant_id!r}" if tenant_id is not None else ""
        super().__init__(
            f"feature group {group_id!r} does not exist{scope}; register it in your feature repo and apply"
        )
        self.group_id = group_id
        self.tenant_id = tenant_id


class FeatureNotFoundError(NotFoundError):
    def __init__(self, group_id: str, feature: str, tenant_id: str | None = None) -> None:
        scope = f" for tenant {tenant_id!r}" if tenant_id is not None else ""
        super().__init__(f"feature {feature!r} does not exist in feature group {group_id!r}{scope}")
        self.group_id = group_id
        self.feature = feature
        self.tenant_id = tenant_id


class FeatureGroupDisabledError(FeatureStoreError):
    """A shared group the tenant switched off: nothing is materialized for that tenant."""

    def __init__(self, group_id: str, tenant_id: str) -> None:
        super().__init__(
            f"feature group {group_id!r} is disabled for tenant {tenant_id!r}; enable it in the tenant's"
            " group_settings and apply"
        )
        self.group_id = group_id
        self.tenant_id = tenant_id


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


class ValidationFailedError(PipelineError):
    """Too many rows of one feature broke its rules (more than the group's max_failure_rate)."""

    stage = "validate"


class WriteError(PipelineError):
    stage = "write"


class StatementTimeoutError(FeatureStoreError):
    """A transformation ran longer than the statement timeout (retryable: the database may have been busy)."""

    retryable = True

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"exceeded the statement timeout of {timeout_s:g}s (FEATURE_STORE_STATEMENT_TIMEOUT)")
        self.timeout_s = timeout_s


class OnlineStoreLostDataError(FeatureStoreError):
    """The online store lost values during a publish (restarted, flushed, evicted): publishing again fixes it."""

    retryable = True


class SourceIsolationError(FeatureStoreError):
    """A source table a transform may read is no longer tenant-isolated (changed after `apply`)."""


class WindowError(FeatureStoreError):
    """A materialization window is not allowed (it ends in the future, or full mode spans too many windows)."""


class InvalidInputError(FeatureStoreError):
    """A request's arguments are invalid: a job window, a line of an entities file."""


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
