"""cvrl.py end to end: subprocess smoke runs, torchrun on CPU (DDP gradients equal one process), exact resume,
refused resumes, a non-finite loss, and bad files in the training set."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import data
import cvrl
import training
from conftest import ROOT, HostReads, load_ckpt as load

TINY = ["--frames", "4", "--stride", "2", "--size", "32", "--canvas", "32", "32", "--batch-size", "8",
        "--head-hidden", "64", "--workers", "0", "--log-every", "1"]


def run(args, timeout=600, env=None, torchrun=0):
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else [])
    e = dict(os.environ, **(env or {}))
    e.pop("RANK", None)
    return subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=e)


def cvrl_args(tiny_synthetic, out, *extra):
    return [str(ROOT / "cvrl.py"), "--dataset", "synthetic", "--data", str(tiny_synthetic), "--out", str(out)] + TINY + list(extra)



@pytest.fixture(scope="module")
def two_epochs(tiny_synthetic, tmp_path_factory):
    """One uninterrupted 2-epoch run (8 steps), shared by the smoke test and the resume test."""
    out = tmp_path_factory.mktemp("cvrl") / "full"
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_smoke_trains_checkpoints_and_eval_linear_reads_it(two_epochs, tmp_path):
    out = two_epochs
    ck = load(out / "checkpoint.pt")  # weights_only: tensors and plain containers only
    assert ck["method"] == "cvrl" and ck["step"] == 8 and ck["config"]["arch"] == "tiny"
    assert all(k.startswith("encoder.") for k in ck["backbone"])
    logs = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(logs) == 8 and {"loss", "lr", "grad_norm", "clips_per_s", "data_wait", "contrastive_acc"} <= set(logs[0])
    assert json.loads((out / "config.json").read_text())["batch_size"] == 8
    if not (ROOT / "eval_linear.py").exists():
        pytest.skip("eval_linear.py not written yet")
    r = run([str(ROOT / "eval_linear.py"), "--ckpt", str(out / "checkpoint.pt"), "--json", str(tmp_path / "e.json"),
             "--workers", "0"])
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["num_train"] == 32 and res["num_test"] == 16 and 0 <= res["top1"] <= 100
    assert 0 <= res["knn_top1"] <= 100 and set(res["retrieval_recall"]) == {"1", "5", "10", "20"}


def test_torchrun_ddp_gradients_equal_single_process():
    r = run([str(ROOT / "tests" / "ddp_check.py")], torchrun=2, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count("OK") == 2


def test_torchrun_two_processes_train(tiny_synthetic, tmp_path):
    out = tmp_path / "ddp"
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "1", "--batch-size", "4"), torchrun=2)
    assert r.returncode == 0, r.stderr[-3000:]
    ck = load(out / "checkpoint.pt")
    assert ck["step"] == 4 and ck["config"]["batch_size"] == 4  # 32 videos / (4 x 2 processes)


def test_resume_reaches_the_same_weights(tiny_synthetic, two_epochs, tmp_path):
    full, part = two_epochs, tmp_path / "part"
    r = run(cvrl_args(tiny_synthetic, part, "--epochs", "2", "--max-steps", "4"))  # interrupted after epoch 1
    assert r.returncode == 0 and load(part / "checkpoint.pt")["step"] == 4
    r = run(cvrl_args(tiny_synthetic, part, "--epochs", "2"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stdout
    a, b = load(full / "checkpoint.pt"), load(part / "checkpoint.pt")
    assert a["step"] == b["step"] == 8
    for k in a["backbone"]:
        assert torch.equal(a["backbone"][k], b["backbone"][k]), k
    for k in a["head"]:
        assert torch.equal(a["head"][k], b["head"][k]), k


@pytest.mark.slow  # ~40 s; kept out of the default suite (15-minute CI budget): `pytest -m slow`
def test_mid_epoch_resume_matches_too(tiny_synthetic, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert run(cvrl_args(tiny_synthetic, full, "--epochs", "1")).returncode == 0
    assert run(cvrl_args(tiny_synthetic, part, "--epochs", "1", "--max-steps", "2")).returncode == 0
    assert run(cvrl_args(tiny_synthetic, part, "--epochs", "1")).returncode == 0
    a, b = load(full / "checkpoint.pt"), load(part / "checkpoint.pt")
    assert all(torch.equal(a["backbone"][k], b["backbone"][k]) for k in a["backbone"])


@pytest.mark.slow  # ~40 s; kept out of the default suite (15-minute CI budget): `pytest -m slow`
def test_resume_with_other_network_is_refused_harmless_flags_allowed(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    assert run(cvrl_args(tiny_synthetic, out, "--epochs", "1", "--max-steps", "1")).returncode == 0
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "1", "--head-hidden", "32"))
    assert r.returncode != 0 and "different network" in r.stderr and "--head-hidden" in r.stderr
    assert "Traceback" not in r.stderr
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "1", "--max-steps", "2", "--log-every", "5"))
    assert r.returncode == 0 and "resumed from" in r.stdout


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny_synthetic, tmp_path):
    out = tmp_path / "run"
    assert run(cvrl_args(tiny_synthetic, out, "--epochs", "1")).returncode == 0
    before = load(out / "checkpoint.pt")
    r = run(cvrl_args(tiny_synthetic, out, "--epochs", "3", "--lr", "1e30", "--warmup-epochs", "0"))
    assert r.returncode != 0 and "at step" in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]
    after = load(out / "checkpoint.pt")
    assert after["step"] == before["step"] == 4
    assert all(torch.equal(before["backbone"][k], after["backbone"][k]) for k in before["backbone"])


def test_trains_through_unreadable_files_and_reports_them(tiny_synthetic, tmp_path):
    """A UCF101-layout dataset with two broken files: training completes and lists exactly those files."""
    root, ann = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    ann.mkdir()
    classes = ["Archery", "Biking"]
    (ann / "classInd.txt").write_text("1 Archery\n2 Biking\n")
    vids = sorted(tiny_synthetic.glob("train/*/*.mp4"))
    lines = []
    for i, v in enumerate(vids[:14]):
        c = classes[i % 2]
        dst = root / c / f"v_{c}_g{8 + i:02d}_c01.avi"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(v, dst)
        lines.append(f"{c}/{dst.name} {i % 2 + 1}")
    (root / "Archery" / "v_Archery_g30_c01.avi").write_bytes(b"")
    (root / "Biking" / "v_Biking_g31_c01.avi").write_bytes(os.urandom(3000))
    lines += ["Archery/v_Archery_g30_c01.avi 1", "Biking/v_Biking_g31_c01.avi 2"]
    (ann / "trainlist01.txt").write_text("\n".join(lines) + "\n")
    (ann / "testlist01.txt").write_text("")
    out = tmp_path / "run"
    r = run([str(ROOT / "cvrl.py"), "--dataset", "ucf101", "--data", str(root), "--annotations", str(ann), "--fold", "1",
             "--out", str(out), "--epochs", "3"] + TINY)
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = (out / "skipped.txt").read_text().splitlines()
    assert sorted(s.split(":")[0] for s in skipped) == sorted(
        [str(root / "Archery" / "v_Archery_g30_c01.avi"), str(root / "Biking" / "v_Biking_g31_c01.avi")])
    # the folder is small enough to be checked up front: the 2 broken files are set aside before training, so an
    # epoch is the 14 readable videos, 1 step of 8
    assert load(out / "checkpoint.pt")["step"] == 3


def test_bad_dataset_root_is_refused_clearly(tmp_path):
    r = run([str(ROOT / "cvrl.py"), "--dataset", "folder", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_a_training_step_makes_no_host_sync():
    """cvrl.train_step returns its log values as device tensors and reads none of them on the host: on a GPU the
    next batch's copy and augmentation can queue behind the model (the loop reads the logs every --log-every)."""
    cfg = cvrl.parse_args(["--frames", "4", "--size", "32", "--head-hidden", "64", "--arch", "tiny"])
    encoder = cvrl.build_encoder(cfg.arch)
    model = torch.nn.Sequential(encoder, cvrl.ProjectionHead(encoder.feature_dim, cfg.head_hidden, cfg.head_out,
                                                             cfg.head_layers))
    optimizer = cvrl.configure_optimizer(model, 0.1, cfg.weight_decay, cfg.momentum, cfg.optimizer)
    video = torch.randint(0, 256, (4, 2, 4, 40, 40, 3), dtype=torch.uint8)  # (B, 2 clips, T, H, W, 3)
    with HostReads() as reads:
        out = cvrl.train_step(cfg, model, optimizer, video, 1, 0.1, cvrl.augment_configs(cfg))
    assert reads.calls == [], reads.calls
    assert all(torch.is_tensor(v) and v.numel() == 1 and torch.isfinite(v) for v in out.values())


def test_prefetcher_on_the_cpu_is_the_loader_itself(tiny_synthetic):
    """On the CPU the Prefetcher copies nothing and fetches nothing early: the same batches, in the same order, with
    their "bad" lists, and the sampler and length Steps uses."""
    videos = data.load_split("synthetic", str(tiny_synthetic), split="train")
    dataset = data.VideoDataset(videos, cvrl.PairSampler(4, 2, "decreasing", 1.0), canvas=(32, 32), min_frames=4)
    loader = data.make_loader(dataset, 8, 0, seed=3)
    pre = training.Prefetcher(loader, torch.device("cpu"))
    assert pre.sampler is loader.sampler and len(pre) == len(loader) == 4
    plain = list(loader)
    loader.sampler.set_epoch(0)
    fetched = list(pre)
    assert len(fetched) == len(plain) == 4
    for a, b in zip(plain, fetched):
        assert a.keys() == b.keys() and a["bad"] == b["bad"] and a["failed"] == b["failed"]
        assert all(torch.equal(a[k], b[k]) for k in ("video", "label", "index"))
    # Steps drives it as it drives a loader: epochs, a mid-epoch resume, the step count
    steps = training.Steps(pre, 2, 8, 4, 0, 8)
    got = [(s, b["index"]) for s, b in steps]
    assert [s for s, _ in got] == list(range(2, 8)) and torch.equal(got[0][1], plain[2]["index"])


def test_forward_loss_compiles_to_one_graph():
    """--compile compiles cvrl.forward_loss: encoder, head and loss in one graph with no break (one process; under
    torchrun the gather of the embeddings is deliberately left out of the graph). dynamo.explain traces only."""
    import torch._dynamo as dynamo
    encoder = cvrl.build_encoder("tiny")
    model = torch.nn.Sequential(encoder, cvrl.ProjectionHead(encoder.feature_dim, 64))
    x1, x2 = torch.rand(4, 3, 4, 32, 32), torch.rand(4, 3, 4, 32, 32)
    for amp in (False, True):
        e = dynamo.explain(cvrl.forward_loss)(model, x1, x2, 0.2, amp)
        assert e.graph_count == 1 and e.graph_break_count == 0, e.break_reasons
    dynamo.reset()


@pytest.mark.slow
def test_compiled_run_matches_eager(tiny_synthetic, tmp_path):
    """cvrl.py --compile on the CPU (inductor's C++ backend; minutes on 2 cores): same losses as eager to float
    rounding. Needs a C++ compiler."""
    if not shutil.which("g++") and not shutil.which("c++"):
        pytest.skip("torch.compile on the CPU needs a C++ compiler")
    losses = {}
    for name, extra in (("eager", []), ("compile", ["--compile"])):
        out = tmp_path / name
        r = run(cvrl_args(tiny_synthetic, out, "--epochs", "1", "--max-steps", "2", *extra), timeout=1200)
        assert r.returncode == 0, r.stderr[-3000:]
        losses[name] = [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(losses["eager"]) == 2
    assert losses["compile"] == pytest.approx(losses["eager"], rel=1e-4)
