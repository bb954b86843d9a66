"""Scratch: one CVRL run + probe + random-init probe. python scratch/sweep.py NAME GEN [cvrl flags...]"""
import json, os, sys, time
name, gen, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, root)
os.environ["NANOVIDEOSSL_CACHE"] = os.path.join(root, "scratch", "cache_" + gen)
import numpy as np
import data
if gen == "cand":
    src = open(os.path.join(root, "scratch", "cand.py")).read()
    exec(src, data.__dict__)
import cvrl, eval_linear
out = os.path.join(os.environ.get("SWEEP_OUT", "scratch/runs"), name)
res = {"name": name, "gen": gen, "flags": rest}
eval_flags = [a for a in os.environ.get("EVAL_FLAGS", "").split() if a]
if "--skip-train" not in rest:
    cfg = cvrl.parse_args(rest + ["--out", out])
    t = time.time(); cvrl.train(cfg); res["train_s"] = time.time() - t
    lines = [json.loads(l) for l in open(os.path.join(out, "log.jsonl"))]
    steps = [l for l in lines if "loss" in l]
    res["last"] = steps[-1] if steps else None
    t = time.time()
    r = eval_linear.main(["--ckpt", out + "/checkpoint.pt", "--json", out + "/lin.json"] + eval_flags)
    res["top1"] = r["top1"]; res["eval_s"] = time.time() - t
if os.environ.get("PROBE_RANDOM", "1") == "1":
    r = eval_linear.main(["--ckpt", out + "/checkpoint.pt", "--random-init", "--json", out + "/lin_rand.json"] + eval_flags)
    res["top1_random"] = r["top1"]
print("RESULT", json.dumps(res), flush=True)
with open(os.environ.get("RESULTS", "scratch/results.jsonl"), "a") as f:
    f.write(json.dumps(res) + "\n")
