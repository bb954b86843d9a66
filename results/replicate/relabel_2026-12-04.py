"""Bookkeeping of 2026-12-04: lss.py's default loss became distillation alone (--lambda-up 0 --lambda-ca 0; the
full loss's 1 and 1 are now explicit flags). The LSS runs of the presets lss-pretrained and lss-ablations made before the
switch keep their numbers, but under new row names and commands, so that `replicate.py --report` (and a resumed
grid) reuses them instead of re-running the same configurations:

    lss-ablations  lss-pre-distill (--lambda-up 0 --lambda-ca 0) -> lss-pretrained lss-pre (no flags: the default)
    lss-pretrained lss-pre         (the defaults of then: 1, 1)  -> lss-ablations  lss-pre-full (--lambda-up 1 --lambda-ca 1)
    lss-pretrained lss-oracle      (--targets oracle, 1, 1)      -> lss-ablations  lss-oracle-full (... --lambda-up 1 --lambda-ca 1)
    lss-ablations  lss-pre-up      (--lambda-ca 0)               -> the same row, now --lambda-up 1
    lss-ablations  lss-pre-ca      (--lambda-up 0)               -> the same row, now --lambda-ca 1
    lss-ablations  lss-pre-desc, lss-oracle50, lss-oracle25      -> the same rows, now with --lambda-up 1 --lambda-ca 1
    both grids     clip-frozen (--epochs 0: no step, the loss never runs) -> unchanged

Each command under its new name sets the same Config as the command that ran (only the loss weights' defaults
moved), so the runs are what the new commands would make. Every moved record keeps what ran in "relabelled":
its old grid, row and commands. The new lss-pretrained row lss-oracle (the oracle with distillation alone) was not
run before and is run by the preset itself. Run once from the repository root, before that:

    python results/replicate/relabel_2026-12-04.py     # reads the two grids' results.json as committed in d10261b
"""
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import replicate as R  # noqa: E402

sys.path.insert(0, str(ROOT))
import lss  # noqa: E402

OLD_COMMIT = "d10261b"
MOVES = {  # new grid -> {new row: (old grid, old row)}
    "lss-pretrained": {"clip-frozen": ("lss-pretrained", "clip-frozen"), "lss-pre": ("lss-ablations", "lss-pre-distill")},
    "lss-ablations": {"clip-frozen": ("lss-ablations", "clip-frozen"), "lss-pre-up": ("lss-ablations", "lss-pre-up"),
                      "lss-pre-ca": ("lss-ablations", "lss-pre-ca"), "lss-pre-full": ("lss-pretrained", "lss-pre"),
                      "lss-pre-desc": ("lss-ablations", "lss-pre-desc"),
                      "lss-oracle-full": ("lss-pretrained", "lss-oracle"),
                      "lss-oracle50": ("lss-ablations", "lss-oracle50"),
                      "lss-oracle25": ("lss-ablations", "lss-oracle25")},
}


def old_jobs(grid):
    text = subprocess.run(["git", "show", f"{OLD_COMMIT}:results/replicate/{grid}/results.json"], cwd=ROOT,
                          check=True, capture_output=True, text=True).stdout
    return {(j["row"], j["seed"]): j for j in json.loads(text)["jobs"]}


def same_config(old_cmd, new_cmd):
    """lss.py's Config of the command that ran (with the loss weights' defaults of then, 1 and 1) == the new one's."""
    then = list(old_cmd[1:]) + [f for k in ("--lambda-up", "--lambda-ca") if k not in old_cmd for f in (k, "1")]
    a, b = (dataclasses.asdict(lss.parse_args(c)) for c in (then, list(new_cmd[1:])))
    skip = {"out"} | ({"lambda_up", "lambda_ca"} if a["epochs"] == 0 else set())  # no step: the loss never runs
    return {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}


def main():
    old = {g: old_jobs(g) for g in ("lss-pretrained", "lss-ablations")}
    for grid, moves in MOVES.items():
        P = R.PRESETS[grid]
        out = ROOT / "results" / "replicate" / grid
        for job in R.make_jobs(R.preset_rows(P, P["nuisance"]), P, out, []):
            if job.row.name not in moves:
                print(f"{grid}: {job.id} has no earlier run: the preset runs it")
                continue
            g, row = moves[job.row.name]
            rec = dict(old[g][(row, job.seed)])
            assert rec["status"] == "ok", (g, row, job.seed)
            assert same_config(rec["key"]["cmds"][0], job.cmds[0]), (g, row, job.id)
            if (g, row) != (grid, job.row.name) or rec["key"] != job.key:
                rec["relabelled"] = {"grid": g, "row": row, "cmds": rec["key"]["cmds"], "date": "2026-12-04",
                                     "why": "lss.py's default loss became distillation alone; the same Config "
                                            "under the new command (results/replicate/relabel_2026-12-04.py)"}
            rec.update(row=job.row.name, key=job.key)
            job.dir.mkdir(parents=True, exist_ok=True)
            R.write_json(job.dir / "result.json", rec)
            print(f"{grid}: {job.id} <- {g} {row}/seed{job.seed}")


if __name__ == "__main__":
    main()
