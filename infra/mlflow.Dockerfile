# MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3 (MinIO).
# Installs infra/mlflow.lock: the tracking server's closure of requirements.lock, same
# versions (`make lock` writes it; a test checks it against the tested lock).
FROM python:3.11-slim-bookworm
COPY infra/mlflow.lock /opt/mlflow/requirements.lock
RUN pip install --no-cache-dir -r /opt/mlflow/requirements.lock \
 && useradd --create-home --uid 10001 mlflow
USER mlflow
WORKDIR /home/mlflow
# MLflow 3 reports usage to its ingestion endpoint by default; the platform sends nothing.
ENV MLFLOW_DISABLE_TELEMETRY=true
EXPOSE 5000
