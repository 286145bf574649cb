#!/usr/bin/env bash
# The before/after runs of a change that must not move any result (bench/RESULTS.md, "The redesign, before and
# after"): the demo, the recommender, the classifier, BQ and the service, one after the other, on the checkout ROOT.
# usage: bench/compare_versions.sh TAG ROOT [DATA_DIR] [INDEX]   (run it alone: every figure is timed)
set -u
TAG=$1; ROOT=$(cd "$2" && pwd)
DATA=$(cd "${3:-../shared/datasets}" && pwd); INDEX=$(cd "${4:-runs/soak/index-100000}" && pwd)
OUT=${OUT:-/tmp/compare-$TAG}; mkdir -p "$OUT"
PY=${PYTHON:-python}
cd "$ROOT"
export PYTHONPATH=$ROOT/src
t() { local name=$1; shift; local s; s=$(date +%s); "$@" >"$OUT/$name.log" 2>&1; echo "$name rc=$? $(( $(date +%s)-s ))s" >> "$OUT/times.txt"; }
t demo "$PY" -m deepsem demo --no-serve --out "$OUT/demo"
t recommend "$PY" bench/recommend.py --quick --skip als,bpr --data-dir "$DATA" --out "$OUT/rec" --json "$OUT/recommend.json"
t classify "$PY" bench/classify.py --datasets ag_news --models cnn100+ngrams-reg --minutes 3 --no-fasttext --data-dir "$DATA" --out "$OUT/cls" --json "$OUT/classify.json"
t bq "$PY" bench/bq.py --which ours --minutes 4 --data-dir "$DATA" --out "$OUT/bq" --json "$OUT/bq.json"
t serve "$PY" bench/serve.py --index "$INDEX" --concurrency 8 --duration 15 --data-dir "$DATA" --json "$OUT/serve.json"
echo done >> "$OUT/times.txt"
