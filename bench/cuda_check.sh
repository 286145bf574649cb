#!/bin/bash
# The CUDA path, once, on a machine with a GPU (issue "beyond one machine"): the gpu-marked tests, the README's
# torchrun command with --device cuda, two processes on one GPU (refused with a message, not a hang), and BQ
# training throughput on the GPU against the machine's own CPU cores in the same run.
#
#   bash bench/cuda_check.sh [DATA_DIR]        # DATA_DIR default ../shared/datasets (reads bq/train.tsv, dev.tsv)
#
# PY (default python3) is the interpreter; OUT (default a temporary folder) receives the logs. The log of the run
# recorded in bench/RESULTS.md is bench/results/cuda_h200.log.
set -u
PY=${PY:-python3}
DATA=${1:-../shared/datasets}/bq
OUT=${OUT:-$(mktemp -d)}
WORK=$(mktemp -d)
exec > >(tee "$OUT/cuda_check.log") 2>&1
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
echo "CPU cores: $(nproc)"
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
'GPUs', torch.cuda.device_count(), torch.cuda.get_device_name(0), 'nccl', torch.cuda.nccl.version())"

echo "== 1. pytest -m gpu"
timeout 240 $PY -m pytest -m gpu tests/test_trainer_ddp_cuda.py -v -p no:cacheprovider -rA
echo "rc=$?"

echo "== 2. torchrun --nproc-per-node 1, --device cuda"
timeout 150 $PY -m torch.distributed.run --standalone --nproc-per-node 1 -m deepsem train "$DATA/train.tsv" \
    --dev "$DATA/dev.tsv" --out "$WORK/torchrun1" --device cuda --max-steps 300 --no-progress
echo "rc=$?"; cat "$WORK/torchrun1/training/result.json"

echo "== 3. two processes on one GPU: refused with a message, no hang"
pids=""
for r in 0 1; do
  WORLD_SIZE=2 RANK=$r LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT=29533 timeout 90 $PY -m deepsem train \
      "$DATA/dev.tsv" --out "$WORK/two" --device cuda --max-steps 5 --no-progress > "$OUT/two$r.log" 2>&1 &
  pids="$pids $!"
done
SECONDS=0; wait $pids; echo "both ended after ${SECONDS}s"; tail -n 2 "$OUT/two0.log" "$OUT/two1.log"

echo "== 4. BQ training throughput, 0.4 minutes each (steps x batch / seconds)"
throughput() {  # name, then deepsem train's options
  local name=$1; shift
  timeout 150 $PY -m deepsem train "$DATA/train.tsv" --dev "$DATA/dev.tsv" --out "$WORK/$name" --max-minutes 0.4 \
      --no-progress "$@" | tail -n 3
  $PY - "$WORK/$name" "$name" "$@" <<'PY'
import json, sys
run, name, args = sys.argv[1], sys.argv[2], sys.argv[3:]
r = json.load(open(f"{run}/training/result.json"))
batch = int(args[args.index("--batch-size") + 1]) if "--batch-size" in args else 128
print(f"THROUGHPUT {name}: {r['steps']} steps x {batch} in {r['seconds']:.1f} s = "
      f"{r['steps'] * batch / r['seconds']:.0f} pairs/s; dev {r['metric']} {r['best_metric']}")
PY
}
throughput cpu --device cpu --threads "$(nproc)"
throughput cuda128 --device cuda
throughput cuda1024 --device cuda --batch-size 1024
throughput cuda1024bf16 --device cuda --batch-size 1024 --precision bf16
date -u
