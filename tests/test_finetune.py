"""scripts/finetune.py end to end (subprocesses on the tiny synthetic dataset): the backbone is fine-tuned (weights
and BatchNorm statistics move away from the checkpoint's), --random-init starts from fresh seeded weights, resume is
exact, the JSON carries its keys, torchrun with 2 processes on CPU, an LSS checkpoint, Ctrl-C, and clear refusals."""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch

import cvrl
import training
import eval_linear as E
from conftest import ROOT, load_ckpt as load

import finetune  # noqa: E402

SCRIPT = str(ROOT / "scripts" / "finetune.py")
# 32 training videos / batch 8 = 4 steps per epoch; one test clip per video (16 test videos)
TINY = ["--batch-size", "8", "--workers", "0", "--log-every", "1", "--test-clips", "1"]
JSON_KEYS = {"top1", "top5", "num_train", "num_test", "num_classes", "skipped", "per_class", "random_init", "ckpt",
             "method", "arch", "init_backbone_sha1", "steps", "total_steps", "complete", "final_train_loss", "recipe",
             "views", "dataset", "seconds"}


def run(args, timeout=300, torchrun=0):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"]
                              if torchrun else [])
    env = dict(os.environ)
    env.pop("RANK", None)
    return subprocess.run(cmd + [SCRIPT] + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def ok(r):
    assert r.returncode == 0, f"exit {r.returncode}\nSTDOUT\n{r.stdout[-3000:]}\nSTDERR\n{r.stderr[-3000:]}"
    return r



@pytest.fixture(scope="module")
def cvrl_ckpt(tiny_synthetic, tmp_path_factory):
    """A cvrl.py checkpoint (its keys and config, the tiny R3D with weights that are not build_backbone's seed-0
    init, so "random init" and "the checkpoint" are different weights) pointing at the tiny synthetic dataset: with
    no data flags, finetune.py uses it, as eval_linear.py does."""
    cfg = cvrl.Config(arch="tiny", frames=4, stride=2, size=32, canvas=(32, 32), data=str(tiny_synthetic))
    torch.manual_seed(1234)
    backbone = cvrl.build_backbone(asdict(cfg))
    path = tmp_path_factory.mktemp("cvrl") / "checkpoint.pt"
    training.save_checkpoint(path, {"method": "cvrl", "config": asdict(cfg), "step": 7, "backbone": backbone.state_dict()})
    return path


@pytest.fixture(scope="module")
def full_run(cvrl_ckpt, tmp_path_factory):
    """Two uninterrupted epochs (8 steps) of fine-tuning the CVRL checkpoint."""
    out = tmp_path_factory.mktemp("ft") / "full"
    ok(run(["--ckpt", str(cvrl_ckpt), "--out", str(out), "--epochs", "2", *TINY]))
    return out


def test_finetuning_updates_the_backbone_and_its_batchnorm(cvrl_ckpt, full_run):
    src, ck = load(cvrl_ckpt), load(full_run / "checkpoint.pt")
    assert ck["trained_by"] == "scripts/finetune.py" and ck["step"] == 8 and ck["method"] == "cvrl"
    assert set(ck["backbone"]) == set(src["backbone"])  # build_backbone's layout: eval_linear.py can read it
    convs = [k for k, v in src["backbone"].items() if v.ndim == 5]
    changed = [k for k in convs if not torch.equal(src["backbone"][k], ck["backbone"][k])]
    assert changed == convs  # every conv layer trained: nothing frozen
    bn_means = [k for k in src["backbone"] if k.endswith("running_mean")]
    # BatchNorm ran in train mode: its running statistics moved
    assert bn_means and all(not torch.equal(src["backbone"][k], ck["backbone"][k]) for k in bn_means)
    assert ck["head"]["weight"].shape == (8, 128)  # 8 synthetic classes on the tiny R3D's 128-d feature
    E.build_frozen_backbone(cvrl, ck, random_init=False, seed=0)  # strict load of the fine-tuned weights works


def test_json_has_the_keys(cvrl_ckpt, full_run):
    res = json.loads((full_run / "finetune.json").read_text())  # the default --json: OUT/finetune.json
    assert JSON_KEYS <= set(res)
    assert res["num_train"] == 32 and res["num_test"] == 16 and res["num_classes"] == 8 and res["skipped"] == []
    assert 0 <= res["top5"] <= 100 and res["top1"] <= res["top5"]
    assert res["steps"] == res["total_steps"] == 8 and res["complete"] and not res["random_init"]
    assert res["method"] == "cvrl" and res["arch"] == "tiny" and res["source_step"] == 7
    assert res["init_backbone_sha1"] == training.state_dict_sha1(load(cvrl_ckpt)["backbone"])  # started from the ckpt
    assert res["recipe"]["optimizer"] == "sgd" and res["recipe"]["nesterov"] and res["recipe"]["dropout"] == 0.2
    assert res["recipe"]["lr"] == pytest.approx(0.8 * 8 / 64)  # the recipe's lr at 64, scaled to the batch of 8
    assert res["views"]["frames"] == 4 and res["dataset"]["dataset"] == "synthetic"  # the checkpoint's own settings
    logs = [json.loads(line) for line in (full_run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == list(range(1, 9)) and all({"loss", "acc", "lr"} <= set(r) for r in logs)


def test_random_init_starts_from_fresh_seeded_weights(cvrl_ckpt, tmp_path):
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        ok(run(["--ckpt", str(cvrl_ckpt), "--random-init", "--seed", "3", "--out", str(out), "--epochs", "1",
                "--max-steps", "2", *TINY]))
    res = [json.loads((o / "finetune.json").read_text()) for o in outs]
    src = load(cvrl_ckpt)
    # step 0: not the checkpoint's weights, but exactly build_backbone's init under --seed 3
    assert res[0]["random_init"] and res[0]["init_backbone_sha1"] == res[1]["init_backbone_sha1"]
    assert res[0]["init_backbone_sha1"] != training.state_dict_sha1(src["backbone"])
    fresh = E.build_frozen_backbone(cvrl, src, random_init=True, seed=3)
    assert res[0]["init_backbone_sha1"] == training.state_dict_sha1(fresh.state_dict())
    # and the two runs stay equal after training (same seeds for data, augmentation and dropout)
    a, b = (load(o / "checkpoint.pt") for o in outs)
    assert a["step"] == b["step"] == 2
    for part in ("backbone", "head"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part


def test_resume_reaches_the_same_weights(cvrl_ckpt, full_run, tmp_path):
    part = tmp_path / "part"
    ok(run(["--ckpt", str(cvrl_ckpt), "--out", str(part), "--epochs", "2", "--max-steps", "3", *TINY]))  # mid-epoch
    assert load(part / "checkpoint.pt")["step"] == 3
    assert not json.loads((part / "finetune.json").read_text())["complete"]
    r = ok(run(["--ckpt", str(cvrl_ckpt), "--out", str(part), "--epochs", "2", *TINY]))
    assert "resumed from" in r.stdout
    a, b = load(full_run / "checkpoint.pt"), load(part / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for key in ("backbone", "head"):
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    assert json.loads((part / "finetune.json").read_text())["top1"] == \
        json.loads((full_run / "finetune.json").read_text())["top1"]


def test_torchrun_two_processes(cvrl_ckpt, tmp_path):
    out = tmp_path / "ddp"
    r = run(["--ckpt", str(cvrl_ckpt), "--out", str(out), "--epochs", "1", *TINY, "--batch-size", "4"], torchrun=2)
    ok(r)
    assert load(out / "checkpoint.pt")["step"] == 4  # 32 videos / (4 x 2 processes)
    res = json.loads((out / "finetune.json").read_text())
    assert res["world_size"] == 2 and res["num_test"] == 16 and res["recipe"]["global_batch"] == 8


def test_lss_checkpoint_finetunes(tiny_synthetic, tmp_path):
    from test_lss_train import TINY as LSS_TINY
    lss_out = tmp_path / "lss"
    r = subprocess.run([sys.executable, "lss.py", "--dataset", "synthetic", "--data", str(tiny_synthetic), "--out",
                        str(lss_out), *LSS_TINY, "--max-steps", "1", "--no-zero-shot-eval"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    ok(r)
    out = tmp_path / "ft"
    ok(run(["--ckpt", str(lss_out / "checkpoint.pt"), "--out", str(out), "--epochs", "1", "--max-steps", "2",
            "--optimizer", "adamw", "--lr", "1e-3", *TINY, "--batch-size", "4"]))
    src, ck = load(lss_out / "checkpoint.pt"), load(out / "checkpoint.pt")
    assert ck["method"] == "lss" and ck["step"] == 2
    assert not torch.equal(src["backbone"]["vit.conv1.weight"], ck["backbone"]["vit.conv1.weight"])
    res = json.loads((out / "finetune.json").read_text())
    assert res["method"] == "lss" and res["num_test"] == 16 and res["recipe"]["optimizer"] == "adamw"


def test_ctrl_c_saves_and_exits_130(cvrl_ckpt, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ)
    env.pop("RANK", None)
    proc = subprocess.Popen([sys.executable, SCRIPT, "--ckpt", str(cvrl_ckpt), "--out", str(out), "--epochs", "200",
                             *TINY], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log, deadline = out / "log.jsonl", time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-2000:]
    assert "interrupted: saving" in stdout and "Traceback" not in stderr
    assert load(out / "checkpoint.pt")["step"] >= 2


def test_bad_flags_and_wrong_checkpoints_get_a_message(cvrl_ckpt, full_run, tmp_path, capsys):
    def refused(args, needle):  # in-process: argparse's errors and main()'s SystemExit("error: ...") are the messages
        with pytest.raises(SystemExit) as e:
            finetune.main(args)
        message = capsys.readouterr().err + (e.value.code if isinstance(e.value.code, str) else "")
        assert e.value.code != 0 and needle in message, message[-2000:]

    refused(["--ckpt", str(cvrl_ckpt), "--dropout", "1.5"], "--dropout must be in [0, 1)")
    refused(["--ckpt", str(cvrl_ckpt), "--crops", "2"], "invalid choice")
    refused(["--ckpt", str(cvrl_ckpt), "--no-such-flag"], "unrecognized arguments")
    refused(["--ckpt", str(tmp_path / "nope.pt")], "does not exist")
    # --out holding another script's checkpoint (here: the cvrl checkpoint's own folder) is not resumed from
    refused(["--ckpt", str(cvrl_ckpt), "--out", str(cvrl_ckpt.parent), *TINY], "was not written by scripts/finetune.py")
    # resuming a fine-tuning run as a from-scratch run would mix two runs
    refused(["--ckpt", str(cvrl_ckpt), "--out", str(full_run), "--random-init", *TINY], "other backbone weights")
    # a checkpoint, but not of cvrl.py/lss.py: the command line gets the message, exit 2 (a usage error), no traceback
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pt")
    r = run(["--ckpt", str(tmp_path / "other.pt")])
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "is not a cvrl.py/lss.py checkpoint" in r.stderr
