# MLflow tracking server: PostgreSQL backend store, artifacts proxied to S3 (MinIO).
# Versions match requirements.lock (a test checks they do).
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.13 boto3==1.44.5 \
 && useradd --create-home --uid 10001 mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
