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
# the three UIs link to each other: version descriptions -> Airflow run and review page,
# Airflow task links -> MLflow version and gate review (docs/registry-and-gate.md)
SERVE_PORT=8090 MLFLOW_PORT=5000 AIRFLOW_PORT=8080
export FUSION_MLFLOW_UI_URL="http://127.0.0.1:$MLFLOW_PORT"
export AIRFLOW__API__BASE_URL="http://127.0.0.1:$AIRFLOW_PORT"
export FUSION_REVIEW_URL="http://127.0.0.1:$SERVE_PORT"
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
DAG_EXIT=0
"$BIN/airflow" dags test multimodal_retrieval_training -c "$CONF" > "$DEMO/dag-run.log" 2>&1 \
  || DAG_EXIT=$?
# dags test prints every task's log here; file each where the Airflow UI's log tab reads it
"$BIN/python" "$ROOT/scripts/dag_test_logs.py" "$DEMO/dag-run.log" > "$DEMO/task-logs.log" 2>&1 \
  || echo "(the Airflow UI will show no task logs for this run: $DEMO/task-logs.log says why)"
if [ "$DAG_EXIT" -ne 0 ]; then
  tail -50 "$DEMO/dag-run.log"; echo "DAG run failed; full log: $DEMO/dag-run.log"; exit 1
fi
FINISHED=$(grep -E "DagRun Finished|Marking run" "$DEMO/dag-run.log" | tail -1)
RUN_ID=$(grep -oE "run_id=[^,]+" <<<"$FINISHED" | head -1 | cut -d= -f2)
STATE=$(grep -oE "state=[a-z_]+" <<<"$FINISHED" | head -1 | cut -d= -f2)
echo "DAG run ${RUN_ID:-?}: ${STATE:-unknown} (task logs in the Airflow UI; all of them: $DEMO/dag-run.log)"

step "4/6 gate decision and registry state"
"$BIN/fusion-model" status --config fast "${OVERRIDES[@]}"

step "5/6 ablation table: text-only, three simple fusions and the fusion network on the same data and recipe (about half of the demo's time; DEMO_ABLATION=0 skips it)"
if [ "${DEMO_ABLATION:-1}" = "0" ]; then echo "skipped (DEMO_ABLATION=0)"; else
"$BIN/fusion-model" benchmark --catalog "$DEMO/catalog" --config fast \
  --models zero_shot_text,text_only,concat,weighted_sum,late_fusion,fusion \
  --output "$DEMO/ablation.json" \
  --work-dir "$DEMO/ablation" "train.cache_dir=$FUSION/cache" 2> "$DEMO/ablation.log" \
  | grep -v "^$"
fi

step "6/6 sample search through the serving alias with the champion"
echo 'query "red striped t-shirt", top 5:'
"$BIN/fusion-model" search "red striped t-shirt" -k 5 --config fast "${OVERRIDES[@]}"
echo 'query "black leather boots", filter gender == "women", top 5:'
"$BIN/fusion-model" search "black leather boots" -k 5 --filter 'gender == "women"' \
  --config fast "${OVERRIDES[@]}"

# short commands for the three UIs, sharing demo/env.sh
source "$ROOT/scripts/demo_uis.sh"

REL="${DEMO#"$ROOT"/}"
cat <<EOT

=== where to look (each in its own terminal; the three link to each other)
Search service and review page:  bash $REL/serve.sh       # $FUSION_REVIEW_URL/
MLflow UI (registry, runs):      bash $REL/mlflow-ui.sh   # $FUSION_MLFLOW_UI_URL/
Airflow UI (DAGs, trigger form): bash $REL/airflow-ui.sh  # $AIRFLOW__API__BASE_URL/ (login printed at start-up)
Validation report: $FUSION/runs/*/validation/validation.json (+ data_docs/index.html)
Ablation results:  $DEMO/ablation.json
DAG run log:       $DEMO/dag-run.log
EOT
