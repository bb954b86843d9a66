#!/bin/bash
# The search that chose --quick's CVRL flags (scripts/replicate.py, PRESETS["quick"]["cvrl"]). At the default batch
# of 64, 18 epochs is 126 steps and the quick grid's CVRL was only +1.7 over random init. Each line of JOBS below is
# one run exactly as the quick grid runs it: cvrl.py --epochs 18 --workers 1 plus the flags, one thread, two runs
# side by side, then eval_linear.py on the checkpoint. The random-init probe of the same seed (eval_linear.py
# --random-init) is in results/replicate/quick/results.json: 40.25 (seed 0), 42.75 (seed 1).
#
#   bash scripts/cvrl_quick_search.sh [OUT]       # ~35 min on 2 cores; appends to OUT/results.txt
set -euo pipefail
out=${1:-results/replicate/cvrl-quick-search}
mkdir -p "$out/runs"
JOBS="lr0.8 0 --lr 0.8
lr0.8 1 --lr 0.8
lr12.8 0 --lr 12.8
lr12.8 1 --lr 12.8
lr1.6 0 --lr 1.6
lr1.6 1 --lr 1.6
lr6.4 0 --lr 6.4
lr6.4 1 --lr 6.4
b32lr1.6 0 --batch-size 32 --lr 1.6
b32lr1.6 1 --batch-size 32 --lr 1.6
b32lr3.2 0 --batch-size 32 --lr 3.2
b32lr3.2 1 --batch-size 32 --lr 3.2
b16lr1.6 0 --batch-size 16 --lr 1.6
b16lr1.6 1 --batch-size 16 --lr 1.6"
one() {  # NAME SEED FLAGS...
    local name=$1 seed=$2; shift 2
    local o="$out/runs/${name}_s$seed" s e f
    s=$(date +%s)
    OMP_NUM_THREADS=1 python cvrl.py --out "$o" --seed "$seed" --epochs 18 --workers 1 "$@" > "$o.log" 2>&1
    e=$(date +%s)
    OMP_NUM_THREADS=1 python eval_linear.py --ckpt "$o/checkpoint.pt" --seed "$seed" --workers 1 \
        --json "$o/lin.json" > "$o.eval.log" 2>&1
    f=$(date +%s)
    echo "$name seed=$seed [$*] train_s=$((e-s)) probe_s=$((f-e)) $(python -c "import json,sys; d=[json.loads(l) for l in open(sys.argv[1])][-1]; print(f'steps={d[\"step\"]} final_loss={d[\"loss\"]:.3f}')" "$o/log.jsonl") $(grep -h '^top-1' "$o.eval.log" | cut -c1-14)" >> "$out/results.txt"
}
export -f one; export out
# set -e again inside each child (exported functions do not carry shell options): a failed run writes no result line
echo "$JOBS" | xargs -P 2 -L 1 bash -c 'set -euo pipefail; one "$@"' _
