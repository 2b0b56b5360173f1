#!/usr/bin/env bash
# make demo: the whole platform on its embedded defaults, from a fresh clone.
# Synthetic catalog -> the training DAG end to end (airflow dags test: validate, both
# stages, register, sharded re-embedding into Milvus Lite, gate, promote) -> the gate
# decision -> an ablation table -> a sample search -> where to look.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
DEMO="${DEMO_DIR:-demo}"
DEMO="$(mkdir -p "$DEMO" && cd "$DEMO" && pwd)"
PRODUCTS="${DEMO_PRODUCTS:-2000}"
BIN="$ROOT/.venv/bin"
export AIRFLOW_HOME="$DEMO/airflow"
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/dags"
export AIRFLOW__CORE__PLUGINS_FOLDER="$ROOT/plugins"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
FUSION="$AIRFLOW_HOME/fusion"
OVERRIDES=("index.uri=$FUSION/milvus.db" "registry.tracking_uri=sqlite:///$FUSION/mlflow.db"
           "registry.artifact_location=$FUSION/mlartifacts" "train.cache_dir=$FUSION/cache")

step() { printf '\n=== %s\n' "$*"; }

step "1/6 demo catalog: $PRODUCTS synthetic products with photos"
if [ ! -f "$DEMO/catalog/products.parquet" ]; then
  "$BIN/fusion-model" catalog synthetic --products "$PRODUCTS" --out "$DEMO/catalog"
else
  "$BIN/fusion-model" catalog show "$DEMO/catalog"
fi

step "2/6 Airflow metadata database (SQLite) in $AIRFLOW_HOME"
mkdir -p "$AIRFLOW_HOME"
"$BIN/airflow" db migrate > "$DEMO/airflow-db.log" 2>&1

step "3/6 training DAG end to end (airflow dags test multimodal_retrieval_training)"
CONF=$(printf '{"catalog_uri": "%s", "config_name": "fast", "primary_metric": "ndcg@10", "shards": 2}' "$DEMO/catalog")
"$BIN/airflow" dags test multimodal_retrieval_training -c "$CONF" > "$DEMO/dag-run.log" 2>&1 \
  || { tail -50 "$DEMO/dag-run.log"; echo "DAG run failed; full log: $DEMO/dag-run.log"; exit 1; }
grep -E "Marking run|DagRun Finished" "$DEMO/dag-run.log" | tail -1 | cut -c1-200

step "4/6 gate decision and registry state"
"$BIN/fusion-model" status --config fast "${OVERRIDES[@]}"

step "5/6 ablation table (text-only, three simple fusions and the fusion network; same data and recipe)"
"$BIN/fusion-model" benchmark --catalog "$DEMO/catalog" --config fast \
  --models zero_shot_text,text_only,concat,weighted_sum,late_fusion,fusion \
  --output "$DEMO/ablation.json" \
  --work-dir "$DEMO/ablation" "train.cache_dir=$FUSION/cache" 2> "$DEMO/ablation.log" \
  | grep -v "^$"

step "6/6 sample search through the serving alias with the champion"
"$BIN/fusion-model" search "red striped t-shirt" -k 5 --config fast "${OVERRIDES[@]}"
"$BIN/fusion-model" search "black leather boots" -k 5 --filter 'gender == "women"' \
  --config fast "${OVERRIDES[@]}"

cat <<EOT

=== where to look
Search service and review page (champion beside the challenger, photos, filters):
  $BIN/fusion-model serve --port 8090 --config fast ${OVERRIDES[*]}   # http://127.0.0.1:8090/
MLflow UI (runs, registry, review gallery under each run's artifacts review/gallery.html):
  MLFLOW_DISABLE_TELEMETRY=true $BIN/mlflow ui --backend-store-uri sqlite:///$FUSION/mlflow.db --host 127.0.0.1 --port 5000
Airflow UI (DAGs, runs, trigger form with params; login printed at start-up):
  AIRFLOW_HOME=$AIRFLOW_HOME AIRFLOW__CORE__DAGS_FOLDER=$ROOT/dags \\
  AIRFLOW__CORE__PLUGINS_FOLDER=$ROOT/plugins AIRFLOW__CORE__LOAD_EXAMPLES=False \\
  AIRFLOW__API__HOST=127.0.0.1 PATH=$BIN:\$PATH airflow standalone   # binds 127.0.0.1:8080 only
Validation report: $FUSION/runs/*/validation/validation.json (+ data_docs/index.html)
Ablation results:  $DEMO/ablation.json
DAG run log:       $DEMO/dag-run.log
EOT
