"""Bookkeeping of 2026-12-04 (a sixth session): lss.py's defaults --local-views and --warmup-epochs went from 2 and 1
to 0 and 3. The preset lss-ablations, whose runs all had the 2 local views and the 1 warmup epoch of then, now pins
`--local-views 2 --warmup-epochs 1`; this script rewrites the commands recorded in its results.json to the pinned
ones, after checking that each new command sets the same Config as the command that ran (under the defaults of then)
and that the probe's command is unchanged. Every record keeps
what ran in "relabelled" (a list: an earlier relabelling, results/replicate/relabel_2026-12-04.py, comes first).
The numbers, the table and the plots are untouched. Run once from the repository root:

    python results/replicate/relabel_2026-12-04c.py
"""
import dataclasses
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import replicate as R  # noqa: E402

sys.path.insert(0, str(ROOT))
import lss  # noqa: E402

GRID = "lss-ablations"
WHY = ("lss.py's defaults --local-views and --warmup-epochs went from 2 and 1 to 0 and 3; the preset pins the "
       "values these runs had (results/replicate/relabel_2026-12-04c.py)")
THEN = {"--local-views": "2", "--warmup-epochs": "1"}  # lss.py's defaults when these rows ran


def same_config(old_cmd, new_cmd):
    """lss.py's Config of the command that ran (under the defaults of then, THEN) == the new command's."""
    then = list(old_cmd[1:]) + [a for flag, v in THEN.items() if flag not in old_cmd for a in (flag, v)]
    a, b = (dataclasses.asdict(lss.parse_args(c)) for c in (then, list(new_cmd[1:])))
    return {k: v for k, v in a.items() if k != "out"} == {k: v for k, v in b.items() if k != "out"}


def main():
    path = ROOT / "results" / "replicate" / GRID / "results.json"
    res = json.loads(path.read_text())
    P = dict(R.PRESETS[GRID], seeds=res["seeds"])
    out = ROOT / "results" / "replicate" / GRID
    jobs = {j.id: j for j in R.make_jobs(R.preset_rows(P, P["nuisance"], [r["name"] for r in res["rows"]]), P, out, [])}
    for rec in res["jobs"]:
        job = jobs[f"{rec['row']}/seed{rec['seed']}"]
        old, new = rec["key"]["cmds"], job.key["cmds"]
        if old == new:
            continue
        assert old[0][0] == new[0][0] == "lss.py" and old[1:] == new[1:], job.id  # the probe's command: unchanged
        assert same_config(old[0], new[0]), job.id
        before = rec.get("relabelled")
        rec["relabelled"] = ([before] if isinstance(before, dict) else list(before or [])) + [
            {"grid": GRID, "row": rec["row"], "cmds": old, "date": "2026-12-04", "why": WHY}]
        rec["key"] = job.key
        print(f"{job.id}: {' '.join(old[0][3:])}  ->  {' '.join(new[0][3:])}")
    R.write_json(path, res)


if __name__ == "__main__":
    main()
