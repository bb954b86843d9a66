#!/bin/bash
# The full loss (distillation + uniform prior + concept alignment, each at weight 1) at lss.py's defaults of
# 2026-12-04's sixth session (no local views, 3 warmup epochs), the 3 test seeds, as the preset lss-pretrained runs
# its LSS row (one thread, one loader worker), then the teacher's and the student's probe. Usage, from the repo root:
#     bash results/lss-fullloss-2026-12-04/run.sh RUNS_DIR      # 3 jobs at once, one thread each
set -e
RUNS=${1:?give a directory for the runs}
export OMP_NUM_THREADS=1
for S in 0 1 2; do
  (R=$RUNS/seed$S
   python lss.py --out $R --seed $S --workers 1 --lambda-up 1 --lambda-ca 1 > $R.lss.log 2>&1
   python eval_linear.py --ckpt $R/checkpoint.pt --seed $S --json $R/linear.json --workers 1 > $R.probe.log 2>&1
   python eval_linear.py --ckpt $R/checkpoint.pt --network student --seed $S --json $R/student.json --workers 1 \
       > $R.student.log 2>&1) &
  PIDS="$PIDS $!"
done
for P in $PIDS; do wait $P; done   # set -e: a failed job fails the script (a bare `wait` would return 0)
