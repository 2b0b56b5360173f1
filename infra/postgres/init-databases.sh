#!/usr/bin/env bash
# Runs once, on an empty data volume: one role and database each for Airflow and MLflow,
# with the passwords from infra/.env (never the superuser's).
set -euo pipefail
for service in airflow mlflow; do
    var="${service^^}_DB_PASSWORD"
    password="${!var:?set $var in infra/.env}"
    psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
        -v name="$service" -v password="$password" <<'SQL'
CREATE ROLE :"name" LOGIN PASSWORD :'password';
CREATE DATABASE :"name" OWNER :"name";
SQL
done
