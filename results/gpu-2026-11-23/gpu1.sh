#!/bin/bash
# device call 1: GPU correctness bits + CVRL sweep (3 streams)
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit 1
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, av, einops, tqdm; print(torch.__version__, av.__version__, torch.cuda.get_device_name())"
nproc
python3 -m pytest -q -p no:cacheprovider tests/test_data.py -k cuda 2>&1 | tail -3
export SWEEP_OUT=/tmp/sruns RESULTS=$OUT/results.jsonl
python3 -c "
import os,sys; sys.path.insert(0,'.')
for gen in ['default','cand']:
    os.environ['NANOVIDEOSSL_CACHE']=os.path.abspath('scratch/cache_'+gen)
    import importlib, data; importlib.reload(data)
    if gen=='cand': exec(open('scratch/cand.py').read(), data.__dict__)
    print(data.ensure_synthetic())
" 2>&1 | grep -v it/s | tail -2
F="--device cuda --workers 4"
s1() { PROBE_RANDOM=1 python3 scratch/sweep.py d_def default $F; PROBE_RANDOM=1 python3 scratch/sweep.py c_def cand $F; PROBE_RANDOM=0 python3 scratch/sweep.py d_ep80 default $F --epochs 80; PROBE_RANDOM=0 python3 scratch/sweep.py c_ep80 cand $F --epochs 80; }
s2() { PROBE_RANDOM=1 python3 scratch/sweep.py d_s4 default $F --stride 4; PROBE_RANDOM=1 python3 scratch/sweep.py c_s4 cand $F --stride 4; PROBE_RANDOM=0 python3 scratch/sweep.py d_lars default $F --optimizer lars; PROBE_RANDOM=0 python3 scratch/sweep.py c_lars cand $F --optimizer lars; }
s3() { PROBE_RANDOM=0 python3 scratch/sweep.py d_t2 default $F --temperature 0.2; PROBE_RANDOM=0 python3 scratch/sweep.py d_none default $F --spatial-aug none; PROBE_RANDOM=0 python3 scratch/sweep.py c_none cand $F --spatial-aug none; PROBE_RANDOM=0 python3 scratch/sweep.py c_crop5 cand $F --crop-area 0.5 1.0; }
s1 > $OUT/s1.log 2>&1 &
s2 > $OUT/s2.log 2>&1 &
s3 > $OUT/s3.log 2>&1 &
wait
grep RESULT $OUT/s*.log | cut -c1-400
