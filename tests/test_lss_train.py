"""lss.py training half: a subprocess smoke run (train -> checkpoint -> zero-shot -> eval_linear.py), torchrun with
2 processes on CPU, exact mid-epoch resume, build_backbone, no gradient to the teacher or the text tower in a real
step, the uniform prior's gradient under DDP, the view sampler and the concept spaces."""
import copy
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval_linear
import lss

from conftest import ROOT, HostReads, load_ckpt as load  # noqa: E402

CKPT_KEYS = {"method", "config", "step", "epoch", "backbone", "student", "teacher", "optimizer", "center", "text",
             "concept_names", "skipped", "versions"}
# a CLIP and views small enough that a step takes a fraction of a second on one core
TINY = ["--init", "random", "--width", "64", "--layers", "2", "--embed-dim", "32", "--text-width", "64", "--text-layers", "1",
        "--size", "32", "--local-size", "16", "--canvas", "32", "32", "--frames", "4", "--stride", "2",
        "--local-frames", "2", "--local-views", "2", "--templates", "single", "--batch-size", "4", "--workers", "0",
        "--log-every", "1", "--epochs", "1", "--test-clips", "2"]


def tiny_args(root, out, *extra):
    return ["--dataset", "synthetic", "--data", str(root), "--out", str(out), *TINY, *extra]


def run_py(args, timeout=300, **env):
    r = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **env})
    assert r.returncode == 0, f"exit {r.returncode}\nSTDOUT\n{r.stdout[-4000:]}\nSTDERR\n{r.stderr[-4000:]}"
    return r


# ----------------------------------------------------------------------------- subprocess smoke run

@pytest.fixture(scope="module")
def smoke_run(tiny_synthetic, tmp_path_factory):
    """`python lss.py` on the tiny synthetic dataset: 2 steps (8 steps make an epoch), zero-shot before and after."""
    out = tmp_path_factory.mktemp("lss") / "run"
    run_py(["lss.py", *tiny_args(tiny_synthetic, out, "--max-steps", "2")])
    return out


def test_smoke_checkpoint_and_log(smoke_run):
    ckpt = load(smoke_run / "checkpoint.pt")  # weights_only: tensors and plain containers only
    assert CKPT_KEYS <= set(ckpt)
    assert ckpt["method"] == "lss" and ckpt["step"] == 2 and ckpt["epoch"] == 2 / 8
    assert ckpt["config"]["clip_arch"]["vision_width"] == 64 and ckpt["concept_names"] == lss.data.SYNTHETIC_CLASSES
    # "backbone" is the TEACHER in build_backbone's key layout
    assert set(ckpt["backbone"]) == {"vit." + k for k in ckpt["teacher"]}
    for k, v in ckpt["teacher"].items():
        assert torch.equal(ckpt["backbone"]["vit." + k], v)
    assert not any(k.startswith("visual.") for k in ckpt["text"]) and "text_projection" in ckpt["text"]
    assert ckpt["center"].shape == (8,)
    log = [json.loads(line) for line in (smoke_run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for key in ("cd", "ca", "up", "t_entropy", "t_max_prob", "t_batch_entropy", "t_mi", "lr", "wd", "momentum", "tau_t",
                "clips_per_s", "data_wait", "grad_norm"):
        assert all(np.isfinite(r[key]) for r in steps), key
    assert [r["step"] for r in log if "zero_shot_top1" in r] == [0, 2]
    assert json.loads((smoke_run / "config.json").read_text())["tau_s"] == 0.1  # auto temperature, recorded


def test_zero_shot_command(smoke_run, tmp_path):
    out = tmp_path / "zs.json"
    r = lss.main(["zero-shot", "--ckpt", str(smoke_run / "checkpoint.pt"), "--workers", "0", "--test-clips", "2",
                  "--json", str(out)])  # in-process: the dataset and views come from the checkpoint
    saved = json.loads(out.read_text())
    assert saved["top1"] == r["top1"]
    assert {"top1", "top5", "num_test", "num_classes", "skipped", "per_class", "step"} <= set(saved)
    assert saved["num_test"] == 16 and saved["num_classes"] == 8 and saved["skipped"] == [] and saved["step"] == 2
    assert 0 <= saved["top1"] <= saved["top5"] <= 100
    assert len(saved["per_class"]) == 8


def test_zero_shot_frozen_clip(tiny_synthetic, tmp_path):
    torch.manual_seed(0)
    clip = lss.CLIP(lss.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=1, vision_width=64,
                                   vision_patch_size=8, vision_heads=1, text_width=64, text_heads=1, text_layers=1))
    torch.save(clip.state_dict(), tmp_path / "clip.pt")
    r = lss.main(["zero-shot", "--clip", str(tmp_path / "clip.pt"), "--dataset", "synthetic", "--data",
                  str(tiny_synthetic), "--workers", "0", "--test-clips", "1", "--frames", "2", "--templates", "single"])
    assert r["num_test"] == 16 and r["ckpt"] is None and r["views"]["size"] == 32


def test_eval_linear_on_checkpoint(smoke_run, tmp_path):
    if not (ROOT / "eval_linear.py").exists():
        pytest.skip("eval_linear.py does not exist yet (written separately); the LSS checkpoint is meant for it")
    out = tmp_path / "linear.json"
    run_py(["eval_linear.py", "--ckpt", str(smoke_run / "checkpoint.pt"), "--json", str(out), "--workers", "0",
            "--epochs", "2", "--train-views", "1", "--test-clips", "1", "--lr", "1", "--no-cache"])
    res = json.loads(out.read_text())
    assert res["method"] == "lss" and res["num_test"] == 16 and res["feature_dim"] == 64


# ----------------------------------------------------------------------------- torchrun, resume

def test_torchrun_two_processes(tiny_synthetic, tmp_path):
    out = tmp_path / "ddp"
    run_py(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "lss.py",
            *tiny_args(tiny_synthetic, out, "--max-steps", "2")], OMP_NUM_THREADS="1")
    ckpt = load(out / "checkpoint.pt")
    assert ckpt["step"] == 2 and ckpt["epoch"] == 2 / 4  # 32 videos / (4 x 2 processes) = 4 steps per epoch
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    # each process took a shard; counts are summed (the teacher at steps 0 and 2, the student at step 2)
    assert [r["zero_shot_num_test"] for r in log if "zero_shot_num_test" in r] == [16, 16]
    assert [r["student_zero_shot_num_test"] for r in log if "student_zero_shot_num_test" in r] == [16]


def test_resume_is_exact(tiny_synthetic, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    lss.main(tiny_args(tiny_synthetic, a, "--max-steps", "2", "--no-zero-shot-eval"))
    lss.main(tiny_args(tiny_synthetic, a, "--max-steps", "4", "--no-zero-shot-eval"))  # resumes mid-epoch at step 2
    lss.main(tiny_args(tiny_synthetic, b, "--max-steps", "4", "--no-zero-shot-eval"))
    ca, cb = load(a / "checkpoint.pt"), load(b / "checkpoint.pt")
    assert ca["step"] == cb["step"] == 4
    for key in ("student", "teacher"):
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    assert torch.equal(ca["center"], cb["center"])
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    # and training did move the weights
    assert not torch.equal(ca["student"]["proj"], ca["teacher"]["proj"])


def test_resume_refuses_other_network(tiny_synthetic, smoke_run, tmp_path):
    import shutil
    shutil.copytree(smoke_run, tmp_path / "run")
    with pytest.raises(SystemExit, match="different network"):
        lss.main(tiny_args(tiny_synthetic, tmp_path / "run", "--layers", "3"))


# ----------------------------------------------------------------------------- in-process pieces

def test_build_backbone_loads_and_runs(smoke_run):
    ckpt = load(smoke_run / "checkpoint.pt")
    backbone = lss.build_backbone(ckpt["config"])
    backbone.load_state_dict(ckpt["backbone"])  # strict
    backbone.eval()
    x = torch.rand(3, 3, 4, 32, 32)  # (B, C, T, H, W) in [0, 1], what eval_linear.py feeds every method
    with torch.no_grad():
        y = backbone(x)
        assert y.shape == (3, backbone.feature_dim) and backbone.feature_dim == 64  # ln_post CLS, width-d
        # = CLIP normalisation + ViT layout + the teacher's features
        want = backbone.vit.features(lss.to_vit(x), "cls")
        torch.testing.assert_close(y, want)
        proj = lss.Backbone(ckpt["config"], "proj")
        proj.load_state_dict(ckpt["backbone"])
        assert proj.eval()(x).shape == (3, 32) and proj.feature_dim == 32
        # other clip lengths and sizes work too (time and position embeddings are resized)
        assert backbone(torch.rand(2, 3, 8, 48, 48)).shape == (2, 64)


def test_train_step_gradients_only_reach_the_student(tiny_synthetic, tmp_path):
    # the full loss (lss.py's default is distillation alone): every term's gradient path runs
    cfg = lss.parse_args(tiny_args(tiny_synthetic, tmp_path / "run", "--no-zero-shot-eval", "--lambda-up", "1",
                                   "--lambda-ca", "1"))
    (tmp_path / "run").mkdir()
    # what train() builds, in the same order: data, networks, concept spaces and their loss, optimizer, schedules
    videos = lss.data.load_split("synthetic", cfg.data, split="train")
    sampler = lss.MultiViewSampler(cfg.frames, cfg.stride, cfg.local_views, cfg.local_stride)
    loader = lss.data.make_loader(lss.data.VideoDataset(videos, sampler, canvas=cfg.canvas, min_frames=cfg.frames),
                                  cfg.batch_size, 0, seed=cfg.seed)
    torch.manual_seed(0)
    student_vit, teacher, text = lss.build_networks(cfg, lss.CLIP(lss.clip_config_from_flags(cfg)), "cpu", print)
    names = lss.category_names(cfg.concepts, videos.classes)
    lss_loss = lss.LSSLoss(lss.run_concepts(cfg, text, names, tmp_path / "run", "cpu", 0, 1, print), cfg)
    optimizer = torch.optim.AdamW(lss.param_groups(student_vit), lr=0.0)
    schedule = lss.make_schedules(cfg, len(loader), peak_lr=cfg.lr)
    loader.sampler.set_epoch(0)
    video = next(iter(loader))["video"]  # (4, 2 + 2, 4, 32, 32, 3) uint8
    assert video.shape == (4, 4, 4, 32, 32, 3)
    teacher0 = copy.deepcopy(teacher.state_dict())
    student0 = copy.deepcopy(student_vit.state_dict())
    text0 = copy.deepcopy(text.state_dict())
    concepts0 = {k: v.clone() for k, v in lss_loss.named_buffers() if k != "center"}
    center0 = lss_loss.center.clone()
    step = 3  # past step 0, where the warmup's lr is 0
    with HostReads() as reads:  # no host sync inside a step: the loop reads the logs every --log-every steps
        metrics = lss.train_step(cfg, lss.MultiView(student_vit), teacher, lss_loss, optimizer, schedule, video, step)
    assert reads.calls == [], reads.calls
    assert all(torch.is_tensor(v) and v.numel() == 1 for v in metrics.values())  # left on the device: no sync
    assert all(torch.isfinite(v) for v in metrics.values())
    assert metrics["ca"] > 0 and metrics["up"] > 0  # both extra terms were computed
    assert optimizer.param_groups[0]["lr"] == schedule["lr"][step] > 0
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(p.grad is None and not p.requires_grad for p in text.parameters())
    assert all(v.grad_fn is None and not v.requires_grad for v in lss_loss.buffers())
    assert sum(p.grad.abs().sum() for p in student_vit.parameters() if p.grad is not None) > 0
    for k, v in text.state_dict().items():
        assert torch.equal(v, text0[k])
    for k, v in concepts0.items():
        assert torch.equal(getattr(lss_loss, k), v)
    assert not torch.equal(lss_loss.center, center0)  # the centre moved, after the loss used the old one
    # the teacher moved only through the EMA of the updated student
    m = schedule["momentum"][step]
    student1 = student_vit.state_dict()
    assert any(not torch.equal(student1[k], student0[k]) for k in student0)
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, m * teacher0[k] + (1 - m) * student1[k])


def _up_problem():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 5, generator=g, dtype=torch.float64), torch.randn(5, 6, generator=g, dtype=torch.float64)


def _up_worker(rank, world, port, out_path):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x, w = _up_problem()
        res = {}
        for scope in ("global", "local"):
            weight = w.clone().requires_grad_()
            b = x.shape[0] // world
            sims = [x[rank * b:(rank + 1) * b] @ weight]  # this process's half of the batch, one view
            loss = lss.uniform_prior_loss(lss.global_mean_probs(lss.mean_student_probs(sims, 0.5), scope))
            loss.backward()
            grad = weight.grad.clone()
            dist.all_reduce(grad)  # what DDP does: average the gradients over processes
            res[scope] = dict(loss=loss.detach(), grad=grad / world)
        torch.save(res, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_uniform_prior_ddp_gradient_equals_one_process(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_up_worker, args=(2, port, str(tmp_path / "out")), nprocs=2)
    x, w = _up_problem()
    weight = w.clone().requires_grad_()
    loss = lss.uniform_prior_loss(lss.mean_student_probs([x @ weight], 0.5))  # one process, whole batch
    loss.backward()
    for rank in range(2):
        res = torch.load(tmp_path / f"out.{rank}")
        torch.testing.assert_close(res["global"]["loss"], loss.detach())
        torch.testing.assert_close(res["global"]["grad"], weight.grad)
        assert not torch.allclose(res["local"]["grad"], weight.grad)  # per-process p-bar: another objective


def test_multiview_sampler():
    s = lss.MultiViewSampler(frames=4, stride=4, local_views=3, local_stride=1)
    views = s(100, 25.0, np.random.default_rng(0))
    assert len(views) == 2 + 3 and all(len(v) == 4 for v in views)
    g1, g2 = views[:2]
    assert (np.diff(g1) == 4).all() and (g2 - g1 == 2).all()  # global_2 = global_1 shifted by stride // 2
    window = range(g1[0], g2[-1] + 1)
    for v in views[2:]:
        assert (np.diff(v) == 1).all() and v[0] in window and v[-1] in window  # locals: dense, inside the window
    short = s(5, 25.0, np.random.default_rng(0))  # shorter than the window: indices wrap
    assert all(((v >= 0) & (v < 5)).all() for v in short)
    assert lss.local_frame_index(8, 4).tolist() == [0, 2, 5, 7] and lss.local_frame_index(4, 4).tolist() == [0, 1, 2, 3]


def test_make_views_shapes_and_order():
    cfg = lss.parse_args(["--size", "32", "--local-size", "16", "--local-frames", "2", "--frames", "4"])
    video = torch.randint(0, 256, (3, 2 + 2, 4, 40, 40, 3), dtype=torch.uint8)
    video[1] = 0  # video 1 is black: its views must land in rows 1, 3 + 1 (globals) and 1, 3 + 1 (locals)
    ag, al = lss.view_augmentations(cfg)
    no_jitter = lss.data.AugmentConfig(area=(1.0, 1.0), aspect=(1.0, 1.0), flip_p=0, jitter_p=0, gray_p=0)
    g, loc = lss.make_views(video, cfg, no_jitter, no_jitter, torch.Generator().manual_seed(0))
    assert g.shape == (6, 4, 3, 32, 32) and loc.shape == (6, 2, 3, 16, 16)  # view-major (v b), ViT layout
    black = lss.to_vit(torch.zeros(1, 3, 1, 1, 1))[0, 0, :, 0, 0]  # a black pixel after CLIP normalisation
    for x in (g, loc):
        for row in (1, 4):
            torch.testing.assert_close(x[row, 0, :, 0, 0], black)
    g, loc = lss.make_views(video, cfg, ag, al, torch.Generator().manual_seed(0))  # the real recipe runs
    assert torch.isfinite(g).all() and torch.isfinite(loc).all()
    # lss.py's default, no local views: the two global views are the only group
    assert lss.Config.local_views == 0
    (only,) = lss.make_views(video[:, :2], cfg, ag, al, torch.Generator().manual_seed(0))
    assert only.shape == (6, 4, 3, 32, 32)


def test_training_without_local_views(tiny_synthetic, tmp_path):
    """The default views (2 global, no local; tiny_args sets 2 local, so the flag is given) train: each global view
    learns the other's target."""
    out = tmp_path / "run"
    run_py(["lss.py", *tiny_args(tiny_synthetic, out, "--max-steps", "2", "--no-zero-shot-eval", "--local-views", "0")])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert json.loads((out / "config.json").read_text())["local_views"] == 0


def test_colour_augmentation_flags():
    """--color-p / --gray-p reach the views: at 0 a red video stays red (only crop and flip act), at --gray-p 1 every
    view is grey (its three channels equal before CLIP's per-channel normalisation)."""
    video = torch.zeros(2, 2 + 2, 4, 40, 40, 3, dtype=torch.uint8)
    video[..., 0] = 200  # red

    def views(*flags):
        cfg = lss.parse_args(["--size", "32", "--local-size", "16", "--local-frames", "2", "--frames", "4", *flags])
        g, loc = lss.make_views(video, cfg, *lss.view_augmentations(cfg), torch.Generator().manual_seed(0))
        std = torch.tensor(lss.CLIP_STD).view(3, 1, 1)
        return [x * std + torch.tensor(lss.CLIP_MEAN).view(3, 1, 1) for x in (g, loc)]  # back to [0, 1], (N, T, 3, S, S)

    for x in views("--color-p", "0", "--gray-p", "0"):
        torch.testing.assert_close(x[:, :, 0], torch.full_like(x[:, :, 0], 200 / 255), atol=1e-3, rtol=0)
        torch.testing.assert_close(x[:, :, 1:], torch.zeros_like(x[:, :, 1:]), atol=1e-3, rtol=0)
    for x in views("--gray-p", "1"):
        torch.testing.assert_close(x[:, :, 0], x[:, :, 1], atol=1e-3, rtol=0)
        torch.testing.assert_close(x[:, :, 1], x[:, :, 2], atol=1e-3, rtol=0)
    g, _ = views()  # the defaults jitter most views' colour: not every one stays the red it was
    assert (g[:, :, 0] - 200 / 255).abs().amax() > 0.05
    for flag in ("--color-p", "--gray-p"):  # a probability outside 0..1 is refused, by name
        with pytest.raises(SystemExit, match=f"error: {flag} must be in 0..1, got 2.0"):
            lss.parse_args([flag, "2"])


def test_concept_spaces_union_descriptions_and_cache(tmp_path, monkeypatch):
    torch.manual_seed(0)
    clip = lss.CLIP(lss.CLIPConfig(embed_dim=16, image_resolution=16, vision_layers=1, vision_width=64,
                                   vision_patch_size=8, vision_heads=1, text_width=64, text_heads=1, text_layers=1))
    text = lss.text_tower(clip)
    labels = lss.load_concepts_file()["labels"]
    union = lss.category_names("union", labels["synthetic"])
    texts = [lss.class_to_text(n) for n in union]
    assert len(texts) == len(set(texts)) and "moving sideways" in texts and texts.count("archery") == 1
    assert set(map(lss.class_to_text, labels["kinetics400"])) <= set(texts)
    assert "moving sideways" not in map(lss.class_to_text, lss.category_names("union", labels["ucf101"]))
    desc, missing = lss.descriptions_for(union)
    assert missing == [] and all(len(v) == 5 for v in desc.values())
    # 'descriptions': a category vector is the normalised mean of its class's description vectors
    names = labels["synthetic"][:3]
    c = lss.build_concepts(text, names, "descriptions", lss.DEFAULT_TEMPLATES)
    assert c["C_desc"].shape == (15, 16) and c["assign"].tolist() == [0] * 5 + [1] * 5 + [2] * 5
    torch.testing.assert_close(c["C_cat"][1], F.normalize(c["C_desc"][5:10].mean(0), dim=0))
    # a class without descriptions falls back to its name prompt
    _, missing = lss.descriptions_for(["not a real action"])
    assert missing == ["not a real action"]
    # run_concepts caches in the out dir, keyed by what the vectors depend on
    cfg = lss.parse_args(["--templates", "single"])
    first = lss.run_concepts(cfg, text, names, tmp_path, torch.device("cpu"), 0, 1, print)
    assert len(list(tmp_path.glob("concepts-*.pt"))) == 1
    def no_build(*a, **k):
        raise AssertionError("a cache hit must not build anything")
    monkeypatch.setattr(lss, "build_concepts", no_build)
    again = lss.run_concepts(cfg, text, names, tmp_path, torch.device("cpu"), 0, 1, print)
    for k in first:
        assert torch.equal(first[k], again[k])


@pytest.mark.slow  # ~40 s; kept out of the default suite (15-minute CI budget): `pytest -m slow`
def test_uniform_prior_moving_average_is_kept_and_resumed(tiny_synthetic, tmp_path):
    """--up-average ema (MUST's rule for large concept spaces): p-bar = (p-bar_prev + p-bar_batch) / 2, carried in
    the checkpoint so a resumed run continues it; the batch mean (the default for K < 512) carries nothing."""
    out = tmp_path / "ema"
    run_py(["lss.py", *tiny_args(tiny_synthetic, out, "--max-steps", "2", "--up-average", "ema", "--lambda-up", "1",
                                 "--no-zero-shot-eval")])
    p = load(out / "checkpoint.pt")["p_bar"]
    assert p.shape == (8,) and abs(float(p.sum()) - 1) < 1e-4 and (p > 0).all()
    run_py(["lss.py", *tiny_args(tiny_synthetic, out, "--max-steps", "3", "--up-average", "ema", "--lambda-up", "1",
                                 "--no-zero-shot-eval")])
    q = load(out / "checkpoint.pt")
    assert q["step"] == 3 and not torch.equal(q["p_bar"], p)
    plain = tmp_path / "batch"
    run_py(["lss.py", *tiny_args(tiny_synthetic, plain, "--max-steps", "1", "--lambda-up", "1", "--no-zero-shot-eval")])
    assert load(plain / "checkpoint.pt")["p_bar"] is None


# ----------------------------------------------------------------------------- the controls and the student

def test_oracle_control_trains_on_the_truth_and_reports_teacher_and_student(tiny_synthetic, tmp_path):
    """--targets oracle: every target is the true class (target_acc 1), the teacher's own accuracy is logged beside
    it, zero-shot is reported for the teacher and the student at the end, and eval_linear.py probes either."""
    out = tmp_path / "oracle"
    r = run_py(["lss.py", *tiny_args(tiny_synthetic, out, "--max-steps", "3", "--targets", "oracle")])
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert all(r["target_acc"] == 1.0 for r in steps)
    assert all(0.0 <= r["teacher_acc"] <= 1.0 for r in steps)
    assert [r["step"] for r in log if "student_zero_shot_top1" in r] == [3]
    # the run's own claim: the frozen CLIP (step 0) against both networks at the end, as logged
    z0, zt = [r["zero_shot_top1"] for r in log if "zero_shot_top1" in r]
    zs = next(r["student_zero_shot_top1"] for r in log if "student_zero_shot_top1" in r)
    assert (f"zero-shot, the frozen CLIP at step 0 -> now: student {z0:.1f} -> {zs:.1f} ({zs - z0:+.1f}), "
            f"teacher {z0:.1f} -> {zt:.1f} ({zt - z0:+.1f})") in r.stdout
    # lss.py zero-shot evaluates either network of the checkpoint, and agrees with the run's own numbers
    for network, want in (("student", zs), ("teacher", zt)):
        got = lss.main(["zero-shot", "--ckpt", str(out / "checkpoint.pt"), "--network", network, "--workers", "0",
                        "--test-clips", "2", "--batch-size", "4"])
        assert got["top1"] == want, network
    ckpt = load(out / "checkpoint.pt")
    assert not all(torch.equal(ckpt["student"][k], ckpt["teacher"][k]) for k in ckpt["teacher"])
    res = {}
    for network in ("backbone", "student"):  # in-process (the script's own smoke runs are elsewhere)
        eval_linear.main(["--ckpt", str(out / "checkpoint.pt"), "--network", network, "--epochs", "2",
                          "--workers", "0", "--json", str(tmp_path / f"{network}.json"), "--no-cache"])
        res[network] = json.loads((tmp_path / f"{network}.json").read_text())
        assert res[network]["network"] == network
    assert res["backbone"]["top1"] is not None and res["student"]["top1"] is not None


def test_partial_oracle_gives_the_truth_to_that_share_of_the_videos(tiny_synthetic, tmp_path):
    """--oracle-fraction 0.5: half of the 32 training videos (a fixed subset) have the true class as target; the
    targets are right at least that often, and never less often than the teacher alone."""
    out = tmp_path / "half"
    run_py(["lss.py", *tiny_args(tiny_synthetic, out, "--max-steps", "8", "--targets", "oracle",
                                 "--oracle-fraction", "0.5")])
    steps = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r for r in steps if "loss" in r]
    target, teacher = np.mean([r["target_acc"] for r in steps]), np.mean([r["teacher_acc"] for r in steps])
    assert 0.5 <= target < 1.0 and target >= teacher


def test_oracle_needs_labels(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    r = subprocess.run([sys.executable, "lss.py", "--data", str(videos), "--targets", "oracle", "--out",
                        str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--targets oracle needs labelled videos" in r.stderr


def test_name_videos_by_text_on_an_unlabeled_folder(smoke_run, tiny_synthetic, tmp_path):
    """lss.py zero-shot --names on the synthetic videos used as an unlabeled folder: every video gets a row in the
    CSV with its best names (probabilities that add up to at most 1, best first), and the picture is a PNG."""
    import csv
    csv_path, png = tmp_path / "names.csv", tmp_path / "names.png"
    names = "moving up, moving down, rotating"
    r = lss.main(["zero-shot", "--ckpt", str(smoke_run / "checkpoint.pt"), "--data", str(tiny_synthetic / "train"),
                  "--names", names, "--top", "2", "--csv", str(csv_path), "--picture", str(png),
                  "--picture-videos", "3", "--workers", "0", "--test-clips", "1"])
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 32 == len(r["videos"])  # every video of the folder, labels or not
    assert {row["name1"] for row in rows} <= {"moving up", "moving down", "rotating"}
    for row in rows:
        p1, p2 = float(row["prob1"]), float(row["prob2"])
        assert 1.0 >= p1 >= p2 >= 0.0 and p1 + p2 <= 1.0 + 1e-3 and row["name1"] != row["name2"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names_file = tmp_path / "names.txt"
    names_file.write_text("# my classes\nmoving up\nmoving down\n\nmoving up\n")
    assert lss.read_names(str(names_file)) == ["moving up", "moving down"]
    with pytest.raises(SystemExit, match="at least two names"):
        lss.read_names("just one")
