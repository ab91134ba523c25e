# The Airflow 3 image with featurepipe installed (used by docker-compose.yaml for every Airflow service).
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root pyproject.toml README.md /opt/featurepipe/
COPY --chown=airflow:root feature_store /opt/featurepipe/feature_store
COPY --chown=airflow:root plugins /opt/featurepipe/plugins
COPY --chown=airflow:root featurepipe_demo /opt/featurepipe/featurepipe_demo
# Pin Airflow to the image's own version so installing the project never up- or downgrades it.
RUN pip install --no-cache-dir "apache-airflow==3.3.2" "/opt/featurepipe[airflow,server]"
