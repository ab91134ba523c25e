# Sourced by .ci/run, .ci/demo and .ci/test: start PostgreSQL and Redis if they are down, then
# create .venv and install the project with its Airflow and dev extras (again only when
# pyproject.toml changed). Safe to run any number of times.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ensure_services() {
    if ! pg_isready -q -h 127.0.0.1 -p 5432; then
        echo "starting PostgreSQL" >&2
        pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n 1)" main start
    fi
    if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
        echo "starting Redis" >&2
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    fi
    for _ in $(seq 1 30); do
        if pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
            return 0
        fi
        sleep 1
    done
    echo "PostgreSQL or Redis did not come up on 127.0.0.1" >&2
    return 1
}

ensure_test_tools() {
    # The end-to-end test drives Debian's Chromium (a test tool's own browser download fails here);
    # Debian's docker-compose validates docker-compose.yaml without a Docker engine.
    local missing=()
    command -v chromium >/dev/null || missing+=(chromium)
    command -v chromedriver >/dev/null || missing+=(chromium-driver)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing Debian packages: ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q "${missing[@]}" >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
    fi
}

ensure_venv() {
    local stamp
    stamp="$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv
    fi
    if [ "$(cat .venv/.featurepipe-installed 2>/dev/null)" != "$stamp" ]; then
        echo "installing featurepipe into .venv (first run: ~2 minutes)" >&2
        .venv/bin/pip install --quiet --disable-pip-version-check -e '.[airflow,dev]' 2>&1 \
            | grep -v "^WARNING: Location" || true
        .venv/bin/python -c "import feature_store, airflow" >/dev/null
        echo "$stamp" > .venv/.featurepipe-installed
    fi
}

ensure_services
ensure_venv
export PATH="$ROOT/.venv/bin:$PATH"
