"""scripts/replicate.py's plumbing, not its numbers: aggregation, the table, resuming a grid, failed jobs, the
commands it builds (each parsed by its script's own parser), the README block, byte-stable plots, and one real
subprocess run of the smoke preset on the tiny synthetic dataset. The fake runners below stand in for the
subprocesses: they record which jobs run and return made-up accuracies."""
import dataclasses
import json
import math
import subprocess
import sys
import threading
from collections import Counter
import time
from dataclasses import replace

import pytest

import cvrl
import training
import eval_linear
import lss
from data import SyntheticWorld
from conftest import ROOT

import replicate as R  # noqa: E402
import finetune  # noqa: E402
import lss_start  # noqa: E402
import supervised  # noqa: E402

# a small grid for the fake-runner tests: 3 rows (one random-init row and its base) x 2 seeds = 6 jobs
TEST_PRESET = dict(seeds=[0, 1], encoder=[], cvrl=["--epochs", "1"], lss=[], supervised=[], eval=[], nuisance=[0.0],
                   rows=["cvrl", "random-init", "cvrl-uniform"])
ORDER = ["cvrl/seed0", "random-init/seed0", "cvrl-uniform/seed0", "cvrl/seed1", "random-init/seed1",
         "cvrl-uniform/seed1"]


class FakeRunner:
    """Records the jobs it is asked to run; a trained job leaves a 'checkpoint' in its run dir, as cvrl.py would.
    `fail`: {job id: exception to raise}; `interrupt_after`: raise KeyboardInterrupt on the call after that many."""

    def __init__(self, fail=None, interrupt_after=None):
        self.calls, self.fail, self.interrupt_after = [], fail or {}, interrupt_after
        self.found_checkpoint = {}

    def __call__(self, job):
        self.calls.append(job.id)
        ckpt = job.dir / "checkpoint.pt"
        self.found_checkpoint[job.id] = ckpt.exists()
        if job.row.kind != "random":
            ckpt.write_text("fake")
        if self.interrupt_after is not None and len(self.calls) > self.interrupt_after:
            raise KeyboardInterrupt
        if job.id in self.fail:
            raise self.fail[job.id]
        top1 = {"cvrl": 50.0, "random-init": 30.0, "cvrl-uniform": 40.0}[job.row.name] + 2 * job.seed
        out = {"top1": top1, "top5": 90.0}
        if job.row.kind != "random":
            out.update(curve=[[1, 5.0 + job.seed], [2, 4.0]], final_loss=4.0)
        return out


@pytest.fixture
def grid(monkeypatch, tmp_path):
    """main() on TEST_PRESET into tmp_path/out; returns a function runner -> exit code."""
    monkeypatch.setitem(R.PRESETS, "test", dict(TEST_PRESET))
    out = tmp_path / "out"

    def run(runner, *extra):
        return R.main(["--preset", "test", "--out", str(out), "--no-plots", *extra], runner=runner)
    run.out = out
    return run


# ----------------------------------------------------------------------------------------------- aggregation

def test_aggregate_mean_and_sample_std():
    a = R.aggregate([1.0, 2.0, 3.0, 4.0])
    assert a["n"] == 4 and a["mean"] == 2.5
    assert math.isclose(a["std"], math.sqrt(5 / 3))  # ddof=1: sum of squares 5 over n-1 = 3
    assert R.aggregate([50.0, 54.0]) == {"mean": 52.0, "std": math.sqrt(8), "n": 2}
    assert R.aggregate([42.0]) == {"mean": 42.0, "std": None, "n": 1}  # one seed: no std
    assert R.aggregate([None, 7.0, None, 9.0]) == {"mean": 8.0, "std": math.sqrt(2), "n": 2}  # missing values dropped
    assert R.aggregate([]) == {"mean": None, "std": None, "n": 0}


# ----------------------------------------------------------------------------------------------- the table

def fake_summary(tmp_path):
    rows = R.select_rows(R.build_rows(), ["cvrl", "random-init", "cvrl-uniform", "cvrl-per-frame"])
    P = dict(TEST_PRESET, seeds=[0, 1, 2])
    jobs = R.make_jobs(rows, P, tmp_path, [])
    top1 = {"cvrl": [50, 52, 54], "random-init": [30, 32, None], "cvrl-uniform": [40, None, None],
            "cvrl-per-frame": [None, None, None]}
    records = {}
    for j in jobs:
        v = top1[j.row.name][j.seed]
        if v is None and j.row.name != "cvrl-uniform":  # cvrl-uniform seeds 1, 2: not run (yet)
            records[j.id] = {"row": j.row.name, "seed": j.seed, "status": "failed", "error": "boom"}
        elif v is not None:
            records[j.id] = {"row": j.row.name, "seed": j.seed, "status": "ok", "top1": v, "top5": 90.0,
                             "wall_seconds": 10.0}
    return R.summarize(rows, jobs, records)


def test_table_markdown_exact(tmp_path):
    table = R.format_table(fake_summary(tmp_path))
    body, legend = table.split("\n\n")
    assert body.splitlines() == [
        "| | top-1 % (mean ± std, seeds) | Δ vs baseline |",
        "|---|---|---|",
        f"| **{R.GROUPS['baselines']}** | | |",
        "| CVRL default (decreasing P(t), p = 1) | 52.0 ± 2.0 (3 seeds) | +21.0 |",
        "| random-init encoder (no pretraining) | 31.0 ± 1.4 (2 seeds, **1 failed**) | — |",
        f"| **{R.GROUPS['interval']}** | | |",
        "| CVRL default (decreasing P(t), p = 1) | 52.0 ± 2.0 (3 seeds) | +21.0 |",
        "| CVRL uniform P(t) | 40.0 (1 seed) | +9.0 |",
        f"| **{R.GROUPS['consistency']}** | | |",
        "| CVRL default (decreasing P(t), p = 1) | 52.0 ± 2.0 (3 seeds) | +21.0 |",
        "| CVRL per-frame augmentation | **failed** (3 seeds) | — |",
    ]  # no "aug"/"data"/"nuisance" sections: the default row anchors them, but none of their own rows is in the grid
    assert "ddof=1" in legend and legend.endswith("\n")


def test_select_rows_brings_the_base_of_a_random_row():
    rows = R.build_rows([0.0, 0.5])
    assert [r.name for r in R.select_rows(rows, ["random-init-nuisance0.5"])] == \
        ["cvrl-nuisance0.5", "random-init-nuisance0.5"]
    assert [r.name for r in R.select_rows(rows, ["lss-init"])] == ["lss", "lss-init"]
    with pytest.raises(SystemExit, match="unknown row"):
        R.select_rows(rows, ["cvrl-typo"])


# ----------------------------------------------------------------------------------------------- the commands

def parse(cmd):
    """The script's own parser on a job's command line: a flag that does not exist is an error (SystemExit)."""
    script, argv = cmd[0], cmd[1:]
    if script == "cvrl.py":
        return cvrl.parse_args(argv)
    if script == "lss.py":
        return lss.parse_args(argv)
    if script == "scripts/supervised.py":
        return training.parse_config(supervised.Config, argv)
    if script == "scripts/lss_start.py":
        return training.parse_config(lss_start.Config, argv)
    if script == "scripts/finetune.py":
        return finetune.parse_args(argv)
    assert script == "eval_linear.py"
    return eval_linear.parse_args(argv)


def knob(cfg, name):
    """A setting of a parsed command: a field of its own, or a knob of its synthetic world (a SyntheticWorld in a
    method's config; in eval_linear.py's, the dict of the knobs given on its command line)."""
    if name not in {f.name for f in dataclasses.fields(SyntheticWorld)}:
        return getattr(cfg, name)
    world = cfg.synthetic
    return world.get(name) if isinstance(world, dict) else getattr(world, name)


@pytest.mark.parametrize("preset", [pytest.param(p, marks=pytest.mark.slow) if p == "full" else p  # full: ~75 s
                                    for p in sorted(R.PRESETS)])
def test_every_command_parses_and_sets_what_its_row_says(preset, tmp_path):
    P = R.PRESETS[preset]
    rows = R.preset_rows(P, P["nuisance"])  # as main() selects them when no --rows is given
    data_flags = ["--dataset", "synthetic", "--data", str(tmp_path / "videos")]
    jobs = R.make_jobs(rows, P, tmp_path / "out", data_flags)
    assert len(jobs) == len(rows) * len(P["seeds"])
    by_id = {j.id: j for j in jobs}
    for job in jobs:
        cfgs = [parse(cmd) for cmd in job.cmds]
        if job.row.kind == "finetune":  # one command: fine-tune the cvrl row's checkpoint, or its network from scratch
            (ft,), base = cfgs, by_id[job.needs]
            assert ft.seed == job.seed and ft.out.endswith(f"{job.row.name}/seed{job.seed}")
            assert ft.json == ft.out + "/finetune.json" and ft.dataset == "synthetic"
            assert ft.data == str(tmp_path / "videos")
            assert base.row.name == "cvrl" and base.seed == job.seed and ft.ckpt == base.cmds[0][2] + "/checkpoint.pt"
            assert ft.random_init == job.row.name.startswith("ft-scratch") and job.key["base"] == base.key["cmds"]
            # pretrained and from scratch: the same recipe and number of steps (10% of the labels: 10x the epochs)
            twin = parse(by_id[job.id.replace("ft-scratch", "ft-cvrl")].cmds[0])
            assert {k: v for k, v in vars(ft).items() if k not in ("out", "json", "random_init")} == \
                {k: v for k, v in vars(twin).items() if k not in ("out", "json", "random_init")}
            full = parse(by_id[job.id.replace("-labels10", "")].cmds[0]) if "labels10" in job.row.name else ft
            assert (ft.data_fraction, ft.epochs) == ((0.1, 10 * full.epochs) if "labels10" in job.row.name
                                                     else (1.0, full.epochs))
            continue
        probe = cfgs[1] if len(cfgs) > 1 else cfgs[0]  # train, probe[, the student's probe]
        assert probe.seed == job.seed and probe.json.endswith(f"{job.row.name}/seed{job.seed}/linear.json")
        if job.row.student:
            student = cfgs[2]
            assert len(cfgs) == 3 and student.network == "student" and probe.network == "backbone"
            assert student.json == probe.json.replace("/linear.json", "/student.json") and student.ckpt == probe.ckpt
        assert probe.dataset == "synthetic" and probe.data == str(tmp_path / "videos")  # data flags passed through
        if job.row.kind == "random":
            base = by_id[job.needs]
            assert len(cfgs) == 1 and probe.random_init and probe.ckpt == base.cmds[0][2] + "/checkpoint.pt"
            assert probe.cache.endswith(f"{job.row.name}/seed{job.seed}/features")  # not the base's cache
            assert job.key["base"] == base.key["cmds"]  # a change to the base re-runs this job
            continue
        train = cfgs[0]
        assert train.seed == job.seed and train.out.endswith(f"{job.row.name}/seed{job.seed}")
        if job.row.base:  # a trained row that starts from its base's output: after it, and re-run when it changes
            base = by_id[job.needs]
            assert base.row.name == job.row.base and base.seed == job.seed and job.key["base"] == base.key["cmds"]
        else:
            assert job.needs is None
        if job.row.name == "lss-from-start":
            assert train.init == "clip" and train.clip == by_id[job.needs].cmds[0][2] + "/clip.pt"
            assert (train.tau_s, train.tau_t) == (0.1, 0.04)  # the random-init values: the text tower is random
        assert not probe.random_init and probe.ckpt == train.out + "/checkpoint.pt"
        assert train.data == str(tmp_path / "videos")
        expected = {
            "cvrl-p0.5": dict(power=0.5), "cvrl-p2": dict(power=2.0), "cvrl-uniform": dict(interval="uniform"),
            "cvrl-increasing": dict(interval="increasing"), "cvrl-per-frame": dict(spatial_aug="per-frame"),
            "cvrl-temporal-only": dict(spatial_aug="none"), "cvrl-spatial-only": dict(interval="same"),
            "cvrl-data25": dict(data_fraction=0.25), "cvrl-data50": dict(data_fraction=0.5),
            "lss-distill": dict(lambda_up=0.0, lambda_ca=0.0), "lss-up": dict(lambda_up=1.0, lambda_ca=0.0),
            "lss-ca": dict(lambda_up=0.0, lambda_ca=1.0), "lss": dict(lambda_up=1.0, lambda_ca=1.0),
            "cvrl": dict(interval="decreasing", power=1.0, spatial_aug="consistent", data_fraction=1.0, nuisance=0.0),
        }.get(job.row.name, {})
        if job.row.name.startswith("cvrl-data"):  # 1/fraction times the default's epochs: the same number of steps
            expected["epochs"] = round(parse(by_id[f"cvrl/seed{job.seed}"].cmds[0]).epochs / expected["data_fraction"])
        if job.row.name.startswith("search-b"):  # search-b{batch}-lr{lr}
            b, lr = job.row.name.removeprefix("search-b").split("-lr")
            expected = dict(batch_size=int(b), lr=float(lr), epochs=18)
        if job.row.kind == "lss":  # the random-init group keeps its settings; the pretrained group is lss.py's default
            pre = job.row.groups[0] in ("lss_pre", "lss_space", "controls")
            assert train.init == ("tiny" if pre else "random" if job.row.name != "lss-from-start" else "clip"), job.id
            if not pre and job.row.name != "lss-from-start":  # the videos and views they ran with, pinned
                assert (knob(train, "trail"), knob(train, "context"), train.size, train.local_views) == (0.0, 0.0, 48, 4)
                assert train.templates == "kinetics", job.id
            if pre:  # lss.py's defaults: its world, views and schedule
                assert train.synthetic == lss.Config().synthetic and train.ema_horizon == lss.Config.ema_horizon
                assert (train.epochs == 0) == job.row.name.startswith("clip-frozen"), job.id
                assert train.targets == ("oracle" if "oracle" in job.row.name else "teacher"), job.id
        if job.row.name.startswith("lss-pre-"):
            expected = {"lss-pre-up": dict(lambda_up=1.0, lambda_ca=0.0),
                        "lss-pre-ca": dict(lambda_up=0.0, lambda_ca=1.0),
                        "lss-pre-full": dict(lambda_up=1.0, lambda_ca=1.0),
                        "lss-pre-desc": dict(lambda_up=1.0, lambda_ca=1.0, concepts="descriptions"),
                        }.get(job.row.name, {})
        if job.row.kind == "lss" and job.row.groups[0] == "controls":  # lss.py's loss, or the paper's where named
            paper = job.row.name != "lss-oracle"
            expected = dict(lambda_up=float(paper), lambda_ca=float(paper))
        if job.row.name == "lss-pre":  # lss.py's default LSS: distillation alone
            expected = dict(lambda_up=0.0, lambda_ca=0.0)
        if job.row.name.startswith("cvrl-nuisance"):
            expected = dict(nuisance=float(job.row.name.removeprefix("cvrl-nuisance")))
            assert knob(probe, "nuisance") == expected["nuisance"]  # eval_linear.py with --dataset would not inherit it
        for k, v in expected.items():
            assert knob(train, k) == v, (job.id, k)
    # the supervised upper bound trains the very network and clips of the CVRL rows
    sup = next((parse(j.cmds[0]) for j in jobs if j.row.kind == "supervised"), None)
    if sup is not None:
        c = parse(by_id["cvrl/seed0"].cmds[0])
        assert (sup.arch, sup.frames, sup.stride, sup.size, tuple(sup.canvas)) == \
            (c.arch, c.frames, c.stride, c.size, tuple(c.canvas))


def test_the_search_ran_what_the_quick_preset_runs():
    """cvrl-search's chosen row (batch 16, lr 1.6) is the quick preset's CVRL command, and its "cvrl" row the
    default batch 64 at the same budget: the search's numbers are about the flags the grid uses."""
    def cvrl_cmd(preset, row):
        P = R.PRESETS[preset]
        job = next(j for j in R.make_jobs(R.select_rows(R.build_rows([0.0]), [row]), P, ROOT / "o", [])
                   if j.row.name == row and j.seed == 0)
        cmd = job.cmds[0]
        i = cmd.index("--out")
        return cmd[:i] + cmd[i + 2:]  # without --out RUN
    chosen, quick = parse(cvrl_cmd("cvrl-search", "search-b16-lr1.6")), parse(cvrl_cmd("quick", "cvrl"))
    assert vars(chosen) == vars(quick) and (quick.batch_size, quick.lr, quick.epochs) == (16, 1.6, 18)
    default = parse(cvrl_cmd("cvrl-search", "cvrl"))
    assert (default.batch_size, default.lr, default.epochs) == (64, 3.2, 18)
    assert not {r.name for r in R.build_rows([0.0]) if "search" in r.groups} & {
        r.name for r in R.preset_rows(R.PRESETS["quick"], [0.0])}


# ----------------------------------------------------------------------------------------------- resume

def test_resume_runs_only_the_rest_and_reruns_changed_jobs(grid, monkeypatch):
    first = FakeRunner(interrupt_after=2)
    assert grid(first) == 130  # Ctrl-C during the 3rd job
    assert first.calls == ORDER[:3]
    saved = json.loads((grid.out / "results.json").read_text())
    assert [(j["row"], j["seed"]) for j in saved["jobs"]] == [("cvrl", 0), ("random-init", 0)]

    second = FakeRunner()
    assert grid(second) == 0
    assert second.calls == ORDER[2:]  # the interrupted job again, then the ones never started
    assert second.found_checkpoint["cvrl-uniform/seed0"]  # same commands: its run dir was kept (the script resumes)
    saved = json.loads((grid.out / "results.json").read_text())
    assert len(saved["jobs"]) == 6 and all(j["status"] == "ok" for j in saved["jobs"])
    cvrl_row = next(r for r in saved["rows"] if r["name"] == "cvrl")
    assert cvrl_row["top1"] == {"mean": 51.0, "std": math.sqrt(2), "n": 2} and cvrl_row["seeds"] == [0, 1]

    third = FakeRunner()
    assert grid(third) == 0 and third.calls == []  # everything done with the same commands

    # one row's flags change: only its jobs run again, from an emptied run dir
    rows = R.build_rows
    monkeypatch.setattr(R, "build_rows", lambda levels=(0.0,): [
        replace(r, train=("--power", "3")) if r.name == "cvrl-uniform" else r for r in rows(levels)])
    fourth = FakeRunner()
    assert grid(fourth) == 0
    assert fourth.calls == ["cvrl-uniform/seed0", "cvrl-uniform/seed1"]
    assert not any(fourth.found_checkpoint.values())  # the old checkpoint belonged to other flags: removed

    # the preset's CVRL flags change: every CVRL job AND the random-init jobs whose base they are
    R.PRESETS["test"]["cvrl"] = ["--epochs", "2"]
    fifth = FakeRunner()
    assert grid(fifth) == 0 and fifth.calls == ORDER


def test_failed_jobs_are_recorded_the_grid_goes_on_and_the_exit_code_says_so(grid, capsys):
    runner = FakeRunner(fail={"cvrl/seed1": R.JobFailed("`python cvrl.py` exited with status 1", tail="Traceback..."),
                              "cvrl-uniform/seed0": RuntimeError("linear.json is not JSON")})
    assert grid(runner) == 1
    assert runner.calls == [j for j in ORDER if j != "random-init/seed1"]  # its base failed: not even started
    saved = json.loads((grid.out / "results.json").read_text())
    jobs = {f"{j['row']}/seed{j['seed']}": j for j in saved["jobs"]}
    assert jobs["cvrl/seed1"]["status"] == "failed" and jobs["cvrl/seed1"]["log_tail"] == "Traceback..."
    assert "exited with status 1" in jobs["cvrl/seed1"]["error"]
    assert jobs["cvrl-uniform/seed0"]["error"] == "RuntimeError: linear.json is not JSON"
    assert jobs["random-init/seed1"]["status"] == "failed" and "needs cvrl/seed1" in jobs["random-init/seed1"]["error"]
    assert [j for j in ORDER if jobs[j]["status"] == "ok"] == ["cvrl/seed0", "random-init/seed0", "cvrl-uniform/seed1"]
    table = (grid.out / "table.md").read_text()
    assert "| CVRL default (decreasing P(t), p = 1) | 50.0 (1 seed, **1 failed**) | +20.0 |" in table
    assert "3 job(s) failed" in capsys.readouterr().err
    # the next run retries exactly the failed jobs
    retry = FakeRunner()
    assert grid(retry) == 0
    assert retry.calls == ["cvrl-uniform/seed0", "cvrl/seed1", "random-init/seed1"]


class ConcurrentRunner(FakeRunner):
    """FakeRunner that takes a little time and logs when each job starts and ends, to check the parallel scheduler."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.events, self.lock = [], threading.Lock()

    def __call__(self, job):
        with self.lock:
            self.events.append(("start", job.id))
        time.sleep(0.05)
        try:
            return super().__call__(job)
        finally:
            with self.lock:
                self.events.append(("end", job.id))


def test_parallel_runs_two_at_a_time_and_a_random_row_only_after_its_base(grid):
    runner = ConcurrentRunner()
    assert grid(runner, "--parallel", "2") == 0
    assert sorted(runner.calls) == sorted(ORDER)
    running, most = set(), 0
    for kind, job_id in runner.events:
        if kind == "start":
            running.add(job_id)
            most = max(most, len(running))
        else:
            running.remove(job_id)
    assert most == 2  # two at a time, never more
    pos = {e: i for i, e in enumerate(runner.events)}
    for seed in (0, 1):  # the random-init probe needs its base's checkpoint: it starts after the base has ended
        assert pos[("start", f"random-init/seed{seed}")] > pos[("end", f"cvrl/seed{seed}")]
    # while cvrl/seed0 trains, the next job that needs nothing (cvrl-uniform/seed0) runs beside it, not random-init
    assert {runner.events[0][1], runner.events[1][1]} == {"cvrl/seed0", "cvrl-uniform/seed0"}
    saved = json.loads((grid.out / "results.json").read_text())
    assert len(saved["jobs"]) == 6 and all(j["status"] == "ok" and j["threads"] >= 1 for j in saved["jobs"])
    cvrl_row = next(r for r in saved["rows"] if r["name"] == "cvrl")
    assert cvrl_row["top1"] == {"mean": 51.0, "std": math.sqrt(2), "n": 2}  # the same numbers as a serial grid


def test_parallel_failure_of_a_base_fails_its_random_row(grid):
    runner = ConcurrentRunner(fail={"cvrl/seed0": R.JobFailed("boom")})
    assert grid(runner, "--parallel", "2") == 1
    saved = {f"{j['row']}/seed{j['seed']}": j for j in json.loads((grid.out / "results.json").read_text())["jobs"]}
    assert "needs cvrl/seed0" in saved["random-init/seed0"]["error"]
    assert "random-init/seed0" not in runner.calls  # never started
    assert sum(j["status"] == "ok" for j in saved.values()) == 4


def test_parallel_ctrl_c_lets_the_running_job_finish_and_starts_no_other(grid):
    stop = ConcurrentRunner(fail={"cvrl-uniform/seed0": KeyboardInterrupt()})  # Ctrl-C in the job beside the 1st
    assert grid(stop, "--parallel", "2") == 130
    # the fake's "Ctrl-C" surfaces when its job ends, by which time cvrl/seed0 may have ended and let its random-init
    # row start (a real Ctrl-C reaches the scheduler at once); nothing after those is started
    assert stop.calls[:2] in (["cvrl/seed0", "cvrl-uniform/seed0"], ["cvrl-uniform/seed0", "cvrl/seed0"])
    assert stop.calls[2:] in ([], ["random-init/seed0"])
    saved = json.loads((grid.out / "results.json").read_text())
    assert ("cvrl", 0, "ok") in [(j["row"], j["seed"], j["status"]) for j in saved["jobs"]]  # finished, so it counts
    assert grid(FakeRunner()) == 0  # the resumed grid runs the rest


def test_wall_clock_counts_every_invocation_of_a_resumed_grid(grid):
    assert grid(FakeRunner(interrupt_after=2)) == 130
    assert grid(FakeRunner()) == 0
    inv = json.loads((grid.out / "results.json").read_text())["invocations"]
    assert len(inv) == 2 and all(i["elapsed_seconds"] >= 0 and i["parallel"] == 1 for i in inv)
    assert R.wall_clock([{"elapsed_seconds": 3600.0}]) == "1:00:00"
    assert R.wall_clock([{"elapsed_seconds": 60.0}, {"elapsed_seconds": 61.0}]) == "0:02:01 over 2 invocations"
    assert R.wall_clock([{"elapsed_seconds": None}, {"elapsed_seconds": 5.0}]) == \
        "0:00:05 over 2 invocations (one or more not timed)"


def test_side_by_side_jobs_get_their_share_of_threads(tmp_path):
    out = tmp_path / "env.log"
    R.run_command(["-c", "import os; print('threads', os.environ.get('OMP_NUM_THREADS'))"], out, threads=3)
    assert "threads 3" in out.read_text()


# ----------------------------------------------------------------------------------------------- README and plots

def test_update_readme_replaces_only_the_marked_block(grid, tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{R.README_BEGIN}\nold numbers\n{R.README_END}\n\nafter\n")
    assert grid(FakeRunner(), "--update-readme", "--readme", str(readme)) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n" + R.README_BEGIN) and text.endswith(R.README_END + "\n\nafter\n")
    assert "old numbers" not in text
    assert (grid.out / "table.md").read_text() in text and "--update-readme" in text and "torch " in text
    assert text.count(R.README_BEGIN) == 1
    # no markers: nothing written, the block is printed for pasting
    plain = tmp_path / "PLAIN.md"
    plain.write_text("# no markers\n")
    assert grid(FakeRunner(), "--update-readme", "--readme", str(plain)) == 0
    assert plain.read_text() == "# no markers\n"
    assert "paste this block" in capsys.readouterr().out


def test_plots_are_byte_identical_for_the_same_numbers(grid, tmp_path, monkeypatch, capsys):
    assert grid(FakeRunner()) == 0
    P = R.PRESETS["test"]
    rows = R.select_rows(R.build_rows(), P["rows"])
    jobs = R.make_jobs(rows, P, grid.out, [])
    records = {j.id: json.loads((j.dir / "result.json").read_text()) for j in jobs}
    summary = R.summarize(rows, jobs, records)
    pngs = []
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        written = R.make_plots(summary, jobs, records, tmp_path / d)
        assert [p.name for p in written] == ["curves.png", "bars.png"]
        pngs.append([p.read_bytes() for p in written])
    assert pngs[0] == pngs[1]
    assert all(b"Software" not in png and b"matplotlib" not in png for png in pngs[0])  # no version/time metadata
    # without matplotlib: a message, no plots, no crash
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert R.make_plots(summary, jobs, records, tmp_path) == []
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_report_writes_the_finished_jobs_and_runs_nothing(grid):
    assert grid(FakeRunner(interrupt_after=3)) == 130  # 3 of 6 jobs finished
    runner = FakeRunner()
    assert grid(runner, "--report") == 0
    assert runner.calls == []
    saved = json.loads((grid.out / "results.json").read_text())
    assert [(j["row"], j["seed"]) for j in saved["jobs"]] == [("cvrl", 0), ("random-init", 0), ("cvrl-uniform", 0)]
    assert len(saved["invocations"]) == 1  # the report added no invocation (it took none of the grid's time)
    assert {r["name"]: r["top1"]["n"] for r in saved["rows"]} == {"cvrl": 1, "random-init": 1, "cvrl-uniform": 1}
    assert (grid.out / "table.md").read_text() == R.format_table(saved["rows"])


def test_target_quality_points_are_per_seed_gains_over_the_same_seeds_frozen_clip(tmp_path):
    def rec(row, seed, **k):
        return {"row": row, "seed": seed, "status": "ok", **k}
    frozen = [rec("clip-frozen", s, top1=60.0 + s, zero_shot_top1=58.75) for s in (0, 1)]
    lss = [rec("lss-pre", s, top1=0, student_top1=66.0, student_zero_shot_top1=62.0, target_acc=49.0 + s)
           for s in (0, 1)]
    oracle = [rec("lss-oracle", 0, top1=0, student_top1=80.0, student_zero_shot_top1=70.0, target_acc=100.0),
              rec("lss-oracle50", 1, top1=0, student_top1=70.0, student_zero_shot_top1=65.0, target_acc=75.0),
              rec("lss-oracle25", 2, top1=0, student_top1=70.0, student_zero_shot_top1=65.0, target_acc=62.0)]
    pts = R.target_quality_points(frozen + lss + oracle)  # seed 2 has no frozen run: its point is left out
    labels = {r.name: r.label for r in R.build_rows()}
    assert pts == [(labels["lss-pre"], 49.0, 6.0, 3.25), (labels["lss-pre"], 50.0, 5.0, 3.25),
                   (labels["lss-oracle50"], 75.0, 9.0, 6.25), (labels["lss-oracle"], 100.0, 20.0, 11.25)]
    written = R.make_plots([], [], {}, tmp_path, beside=frozen + lss + oracle)
    assert [p.name for p in written] == ["target_quality.png"]


# ----------------------------------------------------------------------------------------------- real subprocesses

def run_replicate(*args):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "replicate.py"), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)


def test_smoke_preset_end_to_end_then_nothing_to_redo(tiny_synthetic, tmp_path):
    """cvrl.py -> eval_linear.py, eval_linear.py --random-init on that checkpoint, and scripts/finetune.py on that
    checkpoint and on its network from scratch (ft-cvrl and ft-scratch bring their base), as real subprocesses;
    a fine-tune row's top-1 is the fine-tuned network's. Run again: nothing to redo."""
    args = ["--preset", "smoke", "--rows", "cvrl,random-init,ft-cvrl,ft-scratch", "--dataset", "synthetic", "--data",
            str(tiny_synthetic), "--out", str(tmp_path / "out"), "--no-plots"]
    r = run_replicate(*args)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    jobs = {j["row"]: j for j in saved["jobs"]}
    assert set(jobs) == {"cvrl", "random-init", "ft-cvrl", "ft-scratch"}
    assert all(j["status"] == "ok" for j in jobs.values())
    for j in (jobs["cvrl"], jobs["random-init"]):
        assert 0 <= j["top1"] <= 100 and j["num_train"] == 32 and j["num_test"] == 16  # the tiny dataset: 8 x (4 + 2)
        assert -1 <= j["between_video_cosine"] <= 1
    assert jobs["cvrl"]["steps"] == 2 and [s for s, _ in jobs["cvrl"]["curve"]] == [1, 2]
    assert math.isfinite(jobs["cvrl"]["final_loss"]) and "curve" not in jobs["random-init"]
    run = tmp_path / "out" / "runs"
    assert json.loads((run / "random-init" / "seed0" / "linear.json").read_text())["random_init"] is True
    assert any((run / "random-init" / "seed0" / "features").iterdir())  # its own feature cache
    for name in ("ft-cvrl", "ft-scratch"):
        res = json.loads((run / name / "seed0" / "finetune.json").read_text())
        assert jobs[name]["top1"] == res["top1"] and jobs[name]["num_test"] == 16 and jobs[name]["steps"] == 2
        assert res["random_init"] == (name == "ft-scratch") and not (run / name / "seed0" / "linear.json").exists()
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| random-init encoder (no pretraining) |" in table
    assert "| CVRL pretrain, then fine-tune (all labels) |" in table and R.GROUPS["finetune"] in table
    r = run_replicate(*args)
    assert r.returncode == 0 and "4 jobs: 4 done earlier, 0 to run" in r.stdout
    assert json.loads((tmp_path / "out" / "results.json").read_text())["jobs"] == saved["jobs"]


def test_every_kind_of_row_has_a_colour_and_every_trained_kind_a_curve_panel():
    kinds = {r.kind for r in R.build_rows([0.0, 0.5])}
    assert kinds <= set(R.COLORS) and kinds - {"random"} <= set(R.CURVE_TITLES) == set(R.SCRIPTS)


def test_smoke_preset_lss_from_a_pretrained_start(tiny_synthetic, tmp_path):
    """lss-from-start brings its base: scripts/lss_start.py -> eval_linear.py, then lss.py --init clip --clip on the
    start's clip.pt -> eval_linear.py, as real subprocesses."""
    r = run_replicate("--preset", "smoke", "--rows", "lss-from-start", "--dataset", "synthetic", "--data",
                      str(tiny_synthetic), "--out", str(tmp_path / "out"), "--no-plots")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    jobs = {j["row"]: j for j in saved["jobs"]}
    assert set(jobs) == {"lss-start", "lss-from-start"} and all(j["status"] == "ok" for j in jobs.values())
    assert jobs["lss-start"]["steps"] == jobs["lss-from-start"]["steps"] == 2
    run = tmp_path / "out" / "runs"
    cfg = json.loads((run / "lss-from-start" / "seed0" / "config.json").read_text())
    assert cfg["init"] == "clip" and cfg["clip"] == R.rel(run / "lss-start" / "seed0" / "clip.pt")
    assert "InfoNCE-pretrained image tower" in (tmp_path / "out" / "table.md").read_text()


@pytest.mark.slow
def test_smoke_preset_all_rows_with_plots(tiny_synthetic, tmp_path):
    """Every kind of job (cvrl, supervised, lss, random-init of both) and the plots: about a minute on 2 cores."""
    r = run_replicate("--preset", "smoke", "--dataset", "synthetic", "--data", str(tiny_synthetic), "--out",
                      str(tmp_path / "out"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(j["row"] for j in saved["jobs"]) == ["cvrl", "lss", "lss-init", "random-init", "supervised"]
    assert all(j["status"] == "ok" for j in saved["jobs"])
    sup = json.loads((tmp_path / "out" / "runs" / "supervised" / "seed0" / "linear.json").read_text())
    assert sup["method"] == "cvrl" and sup["arch"] == "tiny" and sup["step"] == 2
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0 and (tmp_path / "out" / "bars.png").exists()


@pytest.mark.parametrize("preset", ["quick", "cvrl-search", "lss-explore", "lss-pretrained", "finetune", "lss-ablations"])
def test_committed_tables_regenerate_from_their_records(preset):
    """The committed table.md is what today's replicate.py makes of the committed per-job records, and today's
    commands are the recorded ones (so re-running the preset over its runs skips every job). Exception, by design:
    the LSS-from-random-weights rows now spell out the settings that were lss.py's defaults when they ran (the defaults
    moved to the pretrained start, and the loss to distillation alone); their other flags and probe commands are
    unchanged. The LSS-from-the-tiny-CLIP records made before the loss default moved were relabelled to the new
    commands (results/replicate/relabel_2026-12-04.py), and lss-ablations' records to its pinned views and warmup
    (relabel_2026-12-04c.py). A partial grid (lss-ablations: written by --report, some rows with fewer seeds)
    regenerates from the rows and seeds it records."""
    d = ROOT / "results" / "replicate" / preset
    res = json.loads((d / "results.json").read_text())
    P = dict(R.PRESETS[preset], seeds=res["seeds"])
    partial = preset == "lss-ablations"
    rows = R.preset_rows(P, P["nuisance"], [r["name"] for r in res["rows"]] if partial else None)
    jobs = R.make_jobs(rows, P, d, [])
    records = {f"{j['row']}/seed{j['seed']}": j for j in res["jobs"]}
    assert set(records) <= {j.id for j in jobs} if partial else {j.id for j in jobs} == set(records)
    jobs = [j for j in jobs if j.id in records] if partial else jobs
    pinned = Counter(("--trail", "0", "--context", "0", "--clutter", "0", "--noise", "0", "--templates", "kinetics",
                      "--size", "48", "--local-size", "24", "--canvas", "64", "64", "--local-views", "4",
                      "--global-area", "0.4", "1.0", "--local-area", "0.05", "0.4", "--batch-size", "32",
                      "--lr", "4e-3", "--ema-horizon", "0", "--warmup-epochs", "1"))
    loss = ("--lambda-up", "--lambda-ca")

    def weights(cmd, default):  # the loss weights a command trains with, under a default for both
        given = {a: cmd[i + 1] for i, a in enumerate(cmd) if a in loss}  # a repeated flag: the last one wins
        return [float(given.get(f, default)) for f in loss]

    def without_weights(cmd):
        return [a for i, a in enumerate(cmd) if a not in loss and (i == 0 or cmd[i - 1] not in loss)]

    for job in jobs:
        old, new = records[job.id]["key"]["cmds"], job.key["cmds"]
        if old != new:
            assert job.row.name.startswith("lss") and preset in ("quick", "lss-explore"), job.id
            assert len(old) == len(new) and old[0][0] == new[0][0] == "lss.py" and new[1:] == old[1:], job.id
            assert Counter(without_weights(new[0])) - Counter(without_weights(old[0])) in \
                (pinned + Counter(("--init", "random")), Counter()), job.id  # Counter(): lss-from-start
            assert not Counter(without_weights(old[0])) - Counter(without_weights(new[0]))
            # the loss weights were 1 and 1 by default when these rows ran; lss.py's default is now 0 and 0
            assert weights(new[0], 0.0) == weights(old[0], 1.0), job.id
    assert R.format_table(R.summarize(rows, jobs, records)) == (d / "table.md").read_text()


def test_read_log_keeps_both_networks_zero_shot(tmp_path):
    """lss.py logs the teacher's and the student's zero-shot at the end as two records of the same step."""
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"step": 0, "zero_shot_top1": 50.0}, {"step": 2, "loss": 1.0}, {"step": 2, "student_zero_shot_top1": 61.0},
        {"step": 2, "zero_shot_top1": 55.0}, {"step": 2, "lr": 0.1}]) + "\n")
    recs = R.read_log(log)
    assert [r["step"] for r in recs] == [0, 2]
    assert recs[1] == {"step": 2, "loss": 1.0, "student_zero_shot_top1": 61.0, "zero_shot_top1": 55.0}
