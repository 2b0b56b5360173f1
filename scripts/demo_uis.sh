# Sourced by scripts/demo.sh (and its test): writes demo/env.sh, the settings the demo's
# three UIs share so that they link to each other, and demo/{serve,mlflow-ui,airflow-ui}.sh,
# each starting one UI with them (arguments are passed on). Reads ROOT, DEMO, BIN,
# AIRFLOW_HOME, FUSION, the three ports and URLs, and OVERRIDES.
cat > "$DEMO/env.sh" <<EOV
# sourced by the demo's UI scripts: one Airflow home, one MLflow store, linked UIs
export PATH="$BIN:\$PATH"
export AIRFLOW_HOME="$AIRFLOW_HOME" AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins" AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__API__HOST=127.0.0.1 AIRFLOW__API__PORT=$AIRFLOW_PORT
export AIRFLOW__API__BASE_URL="$AIRFLOW__API__BASE_URL"
export FUSION_MLFLOW_UI_URL="$FUSION_MLFLOW_UI_URL" FUSION_REVIEW_URL="$FUSION_REVIEW_URL"
export MLFLOW_DISABLE_TELEMETRY=true
# what a run triggered from the form (or by the schedule) trains, as the demo did
export FUSION_CATALOG_URI="$DEMO/catalog" FUSION_CONFIG_NAME=fast
# no weekly/daily runs: unpausing a DAG does not start one with the deployment defaults
export FUSION_TRAINING_CRON=none FUSION_REFRESH_CRON=none FUSION_FEEDBACK_CRON=none
EOV
OVERRIDES_TEXT="${OVERRIDES[*]}"
write_ui() {  # write_ui NAME COMMAND: demo/NAME.sh starts one UI with env.sh
  local name="$1"; shift
  printf '#!/usr/bin/env bash\n# %s\nsource "%s/env.sh"\nexec %s "$@"\n' \
    "made by make demo" "$DEMO" "$*" > "$DEMO/$name.sh"
  chmod +x "$DEMO/$name.sh"
}
write_ui serve "fusion-model serve --port $SERVE_PORT --config fast $OVERRIDES_TEXT"
write_ui mlflow-ui "mlflow ui --backend-store-uri sqlite:///$FUSION/mlflow.db --host 127.0.0.1 --port $MLFLOW_PORT"
write_ui airflow-ui "env AIRFLOW__API__HOST=127.0.0.1 airflow standalone"
