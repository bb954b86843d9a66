"""eval_linear.py: the linear classifier on features with known structure, softmax view averaging, --random-init,
the feature cache key, an end-to-end run on a folder dataset with an unreadable test video, error exits, and a
subprocess smoke run of the default command."""

import json
import math
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import cvrl
import data
import training
import eval_linear as E

ROOT = Path(__file__).resolve().parents[1]


def tiny_cvrl_checkpoint(path, seed=0, **cfg_overrides):
    """A cvrl.py checkpoint without training: the tiny encoder at its initial weights, plus the keys eval reads."""
    cfg = cvrl.Config(arch="tiny", frames=4, stride=2, size=32, canvas=(32, 32), **cfg_overrides)
    torch.manual_seed(seed)
    backbone = cvrl.build_backbone(asdict(cfg))
    torch.save({"method": "cvrl", "config": asdict(cfg), "backbone": backbone.state_dict(), "step": 0}, path)
    return path


# ----------------------------------------------------------------------------- the classifier


def blobs(means, n_per_class, seed):
    """Gaussian clusters around `means` (C, D), unit noise: linearly separable when the means are far apart."""
    y = torch.arange(len(means)).repeat_interleave(n_per_class)
    return means[y] + torch.randn(len(y), means.shape[1], generator=torch.Generator().manual_seed(seed)), y


def test_linear_probe_separable_classes_reach_100():
    means = 4.0 * torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    x, y = blobs(means, 40, seed=1)
    xt, yt = blobs(means, 20, seed=2)
    clf = E.train_linear(x, y, 8, lr=3.0, epochs=30, batch_size=64)
    probs = E.view_averaged_probs(clf, xt[:, None])  # one view per "video"
    assert E.topk_correct(probs, yt, 1).float().mean() > 0.99


def test_linear_probe_random_labels_stay_near_chance():
    g = torch.Generator().manual_seed(0)
    x, xt = torch.randn(800, 32, generator=g), torch.randn(800, 32, generator=g)
    y, yt = torch.randint(0, 8, (800,), generator=g), torch.randint(0, 8, (800,), generator=g)
    clf = E.train_linear(x, y, 8, lr=10.0, epochs=50, batch_size=128)
    train_acc = E.topk_correct(E.view_averaged_probs(clf, x[:, None]), y, 1).float().mean()
    test_acc = E.topk_correct(E.view_averaged_probs(clf, xt[:, None]), yt, 1).float().mean()
    assert train_acc > 0.2  # it does fit the noise a little ...
    assert test_acc < 0.35  # ... but chance is 12.5% (std 1.2% at 800 samples); 35% cannot happen by accident


def test_linear_init_and_normalisation():
    # weight N(0, 0.01), zero bias; features are L2-normalised, so scaling a feature changes nothing
    clf = E.train_linear(torch.randn(4000, 64), torch.zeros(4000, dtype=torch.long), 1000, lr=0.0, epochs=1,
                         batch_size=4000)
    assert abs(clf.weight.std().item() - 0.01) < 5e-4 and torch.all(clf.bias == 0)
    f = torch.randn(3, 2, 64)
    torch.testing.assert_close(E.view_averaged_probs(clf, f), E.view_averaged_probs(clf, 7.0 * f))


def test_view_averaging_is_mean_softmax():
    """Views whose logits are given exactly: feature = [l / s, sqrt(1 - |l / s|^2)] and weight [s I, 0], so the
    normalised feature times the weight is l."""
    s, C = 30.0, 3
    clf = nn.Linear(C + 1, C)
    with torch.no_grad():
        clf.weight.copy_(torch.cat([s * torch.eye(C), torch.zeros(C, 1)], 1))
        clf.bias.zero_()

    def feature(logits):
        u = torch.tensor(logits, dtype=torch.float) / s
        return torch.cat([u, (1 - u.square().sum()).sqrt()[None]])

    videos = [
        # every single view is wrong (argmax 1 or 2), yet class 0 has the largest mean probability
        [[0.0, 0.2, -5.0], [0.0, -5.0, 0.2], [0.0, 0.2, -5.0]],
        # one extremely confident wrong view: averaging logits would say class 2, averaging softmax says class 0
        [[0.0, 0.0, 20.0], [2.0, 0.0, 0.0], [2.0, 0.0, 0.0]],
    ]
    feats = torch.stack([torch.stack([feature(v) for v in views]) for views in videos])  # (2 videos, 3 views, 4)
    logits = torch.tensor(videos)                                                         # (2, 3, 3)
    probs = E.view_averaged_probs(clf, feats)
    torch.testing.assert_close(probs, logits.softmax(-1).mean(1), atol=1e-5, rtol=1e-5)
    assert probs.argmax(1).tolist() == [0, 0]
    assert all(a != 0 for a in logits[0].argmax(-1).tolist())  # no view of video 0 alone is right
    assert logits[1].mean(0).argmax().item() == 2               # logit averaging would get video 1 wrong
    assert E.topk_correct(probs, torch.tensor([0, 0]), 1).all()


def test_between_video_cosine_is_the_mean_over_pairs_of_different_videos():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(7, 3, 5, generator=g) + torch.tensor([4.0, 0, 0, 0, 0])  # (N, views, D), a common direction
    x = torch.nn.functional.normalize(feats.mean(1), dim=-1)
    pairs = [float(x[i] @ x[j]) for i in range(7) for j in range(7) if i != j]
    assert E.between_video_cosine(feats) == pytest.approx(sum(pairs) / len(pairs), abs=1e-6)
    assert E.between_video_cosine(torch.ones(4, 2, 3)) == pytest.approx(1.0)  # collapsed: one feature for all
    assert E.between_video_cosine(feats[:1]) is None


def test_heldout_split_is_by_video_and_stratified():
    labels = torch.arange(8).repeat_interleave(10)
    fit, held = E.split_heldout(labels, 0.1, seed=0)
    assert set(fit.tolist()).isdisjoint(held.tolist()) and len(fit) + len(held) == 80
    assert torch.bincount(labels[held], minlength=8).tolist() == [1] * 8
    # a class with a single video keeps it for training; a small class still gives one video to the sweep
    fit, held = E.split_heldout(torch.tensor([0, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2]), 0.1, 0)
    assert 0 in fit.tolist() and torch.bincount(torch.tensor([0, 1, 1, 1] + [2] * 16)[held]).tolist() == [0, 1, 2]
    # views of one video stay together: flatten_views repeats the video's label for each of its views
    x, y = E.flatten_views(torch.randn(5, 3, 4), torch.arange(5))
    assert x.shape == (15, 4) and y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]


# ----------------------------------------------------------------------------- backbone and cache key


def test_random_init_really_reinitialises(tmp_path):
    path = tiny_cvrl_checkpoint(tmp_path / "ckpt.pt", seed=123)
    ckpt = E.load_checkpoint(path)
    with torch.no_grad():  # make the checkpoint's weights look trained: nothing equals a fresh init any more
        for v in ckpt["backbone"].values():
            if v.is_floating_point():
                v.add_(0.01 * torch.randn_like(v))
    loaded = E.build_frozen_backbone(cvrl, ckpt, random_init=False, seed=0)
    fresh = E.build_frozen_backbone(cvrl, ckpt, random_init=True, seed=0)
    again = E.build_frozen_backbone(cvrl, ckpt, random_init=True, seed=0)
    sd_ck, sd_l, sd_r = ckpt["backbone"], loaded.state_dict(), fresh.state_dict()
    assert list(sd_r) == list(sd_ck) and all(sd_r[k].shape == sd_ck[k].shape for k in sd_ck)
    assert all(torch.equal(sd_l[k], sd_ck[k]) for k in sd_ck)
    floats = [k for k in sd_ck if sd_ck[k].is_floating_point()]
    assert floats and all(not torch.equal(sd_r[k], sd_ck[k]) for k in floats)
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in sd_r.items())  # seeded: the same baseline each time
    for net in (loaded, fresh):
        assert not net.training and not any(p.requires_grad for p in net.parameters())
    assert training.state_dict_sha1(sd_r) != training.state_dict_sha1(sd_ck)


def test_cache_key_tracks_weights_and_views_not_classifier(tmp_path):
    videos = data.VideoList(["/d/a.mp4", "/d/b.mp4"], [0, 1], ["x", "y"])
    cfg = E.Config(ckpt="c.pt", dataset="folder", data="/d", fold=1, frames=8, stride=2, size=48,
                   test_size=48, canvas=(64, 64), device="cpu")
    sd = cvrl.build_backbone(asdict(cvrl.Config(arch="tiny"))).state_dict()
    sha = training.state_dict_sha1(sd)

    def key(c=cfg, split="train", sha=sha, vids=videos):
        return E.cache_key(E.cache_key_fields(c, split, sha, "cvrl", "tiny", vids))

    for split in ("train", "test"):
        base = key(split=split)
        # classifier and machinery settings: same features, same key
        same = replace(cfg, lr=5.0, epochs=3, weight_decay=1e-3, clf_batch_size=7, heldout=0.3, batch_size=3,
                       workers=0, json="out.json", cache="/elsewhere")
        assert key(same, split) == base
        # the weights: one changed number is another checkpoint
        sd2 = {k: v.clone() for k, v in sd.items()}
        sd2["encoder.stem.0.weight"].view(-1)[0] += 1e-3
        assert key(split=split, sha=training.state_dict_sha1(sd2)) != base
        assert key(replace(cfg, random_init=True), split) != base
        # view settings and data identity
        for change in (dict(frames=16), dict(stride=4), dict(canvas=(64, 80)), dict(seed=1), dict(fold=2),
                       dict(data="/other")):
            assert key(replace(cfg, **change), split) != base, change
        assert key(split=split, vids=data.VideoList(["/d/a.mp4", "/d/c.mp4"], [0, 1], ["x", "y"])) != base
    # split-specific settings only invalidate their split
    assert key(replace(cfg, test_clips=10), "test") != key(split="test")
    assert key(replace(cfg, test_clips=10), "train") == key(split="train")
    assert key(replace(cfg, train_views=4), "train") != key(split="train")
    assert key(replace(cfg, train_views=4), "test") == key(split="test")


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def folder_dataset(tiny_synthetic, tmp_path_factory):
    """ROOT/{train,test}/<class>/*.mp4 from three synthetic classes, plus a zero-byte test video."""
    root = tmp_path_factory.mktemp("folder") / "ds"
    classes = ["move_sideways", "rotate", "static"]
    for split, n in (("train", 3), ("test", 2)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for src in sorted((tiny_synthetic / split / c).glob("*.mp4"))[:n]:
                shutil.copy(src, root / split / c / src.name)
    broken = root / "test" / "rotate" / "broken.mp4"
    broken.write_bytes(b"")
    return root, classes, broken


def test_end_to_end_folder_with_unreadable_test_video(folder_dataset, tmp_path, capsys):
    root, classes, broken = folder_dataset
    ckpt = tiny_cvrl_checkpoint(tmp_path / "ckpt.pt", dataset="folder", data=str(root))
    out, cache = tmp_path / "out.json", tmp_path / "cache"
    common = ["--ckpt", str(ckpt), "--dataset", "folder", "--data", str(root), "--epochs", "5", "--workers", "0",
              "--cache", str(cache), "--canvas", "32", "40", "--test-clips", "2"]
    result = E.main(common + ["--json", str(out)])
    r = json.loads(out.read_text())
    assert r == json.loads(json.dumps(result))
    for k in ("top1", "top5", "num_train", "num_test", "skipped", "per_class", "random_init", "ckpt", "method",
              "views", "classifier"):
        assert k in r
    assert r["num_train"] == 9 and r["num_test"] == 6  # the broken file is not counted
    assert [(s["split"], s["path"]) for s in r["skipped"]] == [("test", str(broken))]
    assert "empty" in r["skipped"][0]["reason"]
    assert list(r["per_class"]) == classes and r["method"] == "cvrl" and r["random_init"] is False
    assert 0 <= r["top1"] <= r["top5"] <= 100
    assert -1 <= r["between_video_cosine"] <= 1
    assert r["views"]["crops"] == 3 and r["views"]["test_views"] == 6  # 2 clips x 3 crops on a non-square canvas
    test_cache = next(cache.glob("test-*.pt"))
    feats = torch.load(test_cache, weights_only=True)
    assert feats["features"].shape == (6, 6, r["feature_dim"]) and feats["skipped"][0]["path"] == str(broken)
    capsys.readouterr()

    # only a classifier setting changes: both feature files are reused, the skipped list comes from the cache
    r2 = E.main(common + ["--lr", "1.0"])
    log = capsys.readouterr().out
    assert log.count("using cached features") == 2
    assert r2["num_test"] == 6 and r2["skipped"] == r["skipped"] and r2["classifier"]["lr"] == 1.0
    # a view setting changes: the test features are recomputed, the training features are not
    E.main(common + ["--lr", "1.0", "--crops", "1"])
    log = capsys.readouterr().out
    assert log.count("using cached features") == 1 and "using cached features " + str(cache / "train-") in log


def test_train_views_do_not_depend_on_batch_size(folder_dataset, tmp_path):
    root, _, _ = folder_dataset
    ckpt = E.load_checkpoint(tiny_cvrl_checkpoint(tmp_path / "ckpt.pt"))
    backbone = E.build_frozen_backbone(cvrl, ckpt, False, 0)
    videos = data.load_split("folder", str(root), split="train")
    cfg = E.Config(frames=4, stride=2, size=32, canvas=(32, 32), train_views=2, workers=0)
    a = E.extract_features(backbone, videos, "train", replace(cfg, batch_size=2), torch.device("cpu"))
    b = E.extract_features(backbone, videos, "train", replace(cfg, batch_size=16), torch.device("cpu"))
    assert a["features"].shape == (9, 2, backbone.feature_dim) and torch.equal(a["index"], b["index"])
    torch.testing.assert_close(a["features"].float(), b["features"].float(), atol=2e-3, rtol=2e-3)
    assert not torch.allclose(a["features"][:, 0].float(), a["features"][:, 1].float())  # the 2 views differ


def test_error_exits_are_messages(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="does not exist"):
        E.main(["--ckpt", str(tmp_path / "nope.pt")])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit, match="cannot read checkpoint"):
        E.main(["--ckpt", str(tmp_path / "junk.pt")])
    # a pickle that would construct an arbitrary object is refused by weights_only=True
    torch.save({"method": "cvrl", "config": {}, "backbone": {}, "evil": nn.ReLU()}, tmp_path / "evil.pt")
    with pytest.raises(SystemExit, match="cannot read checkpoint.*Unsupported global"):
        E.main(["--ckpt", str(tmp_path / "evil.pt")])
    torch.save({"method": "cvrl", "config": {}}, tmp_path / "partial.pt")
    with pytest.raises(SystemExit, match="needs 'method', 'config' and 'backbone'"):
        E.main(["--ckpt", str(tmp_path / "partial.pt")])
    torch.save({"method": "byol", "config": {}, "backbone": {}}, tmp_path / "other.pt")
    with pytest.raises(SystemExit, match="unknown method 'byol'"):
        E.main(["--ckpt", str(tmp_path / "other.pt")])
    monkeypatch.setitem(E.METHODS, "nobackbone", "json")  # a module without build_backbone (lss.py, for now)
    with pytest.raises(SystemExit, match="no build_backbone"):
        E.import_method("nobackbone")
    ckpt = tiny_cvrl_checkpoint(tmp_path / "ckpt.pt")
    with pytest.raises(SystemExit, match="needs --data ROOT"):
        E.main(["--ckpt", str(ckpt), "--dataset", "ucf101"])


def test_subprocess_default_command(tiny_synthetic, tmp_path):
    """`python eval_linear.py --ckpt RUN/checkpoint.pt --json OUT` on a synthetic run: no data flags needed."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt = tiny_cvrl_checkpoint(run / "checkpoint.pt", data=str(tiny_synthetic))
    out = tmp_path / "linear.json"
    p = subprocess.run([sys.executable, "eval_linear.py", "--ckpt", str(ckpt), "--json", str(out)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["num_train"] == 32 and r["num_test"] == 16 and r["skipped"] == []
    assert r["views"]["train_views"] == 2 and r["views"]["test_clips"] == 4 and r["views"]["crops"] == 1
    # 4 training videos per class: 1 of each held out for the lr sweep, all 32 used for the final classifier
    assert r["classifier"]["heldout_videos"] == 8 and len(r["classifier"]["sweep"]) == len(E.LR_GRID)
    assert len(list((run / "features").glob("*.pt"))) == 2  # default cache: next to the checkpoint
    assert "top-1" in p.stdout


# ----------------------------------------------------------------------------- k-NN and retrieval

def brute_force_knn(train, ytr, test, C, k, T):
    preds = []
    for q in test:
        sims = [(float(q @ t), int(y)) for t, y in zip(train, ytr)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * C
        for s, y in sims[:k]:
            votes[y] += math.exp(s / T)
        preds.append(max(range(C), key=lambda c: votes[c]))
    return preds


def test_knn_and_recall_agree_with_brute_force():
    g = torch.Generator().manual_seed(0)
    C = 3
    centres = F.normalize(torch.randn(C, 8, generator=g), dim=-1)
    ytr, yte = torch.arange(30) % C, torch.tensor([0, 1, 2, 2, 1, 0, 1])
    train = F.normalize(centres[ytr] + 0.9 * torch.randn(30, 8, generator=g), dim=-1)
    test = F.normalize(centres[yte] + 0.9 * torch.randn(7, 8, generator=g), dim=-1)
    for k, T in ((1, 0.07), (5, 0.07), (20, 0.5), (50, 1.0)):  # k above the training set: all of it
        assert E.knn_classify(train, ytr, test, C, k, T).tolist() == brute_force_knn(train, ytr, test, C, k, T)
    rec = E.retrieval_recall(train, ytr, test, yte)
    for k in (1, 5, 10, 20):
        want = [any(int(ytr[j]) == int(y) for j in sorted(range(30), key=lambda j: -float(q @ train[j]))[:k])
                for q, y in zip(test, yte)]
        assert rec[str(k)] == pytest.approx(100 * sum(want) / len(want), abs=0.01)
    assert rec["20"] >= rec["10"] >= rec["5"] >= rec["1"]


def test_knn_on_a_hand_made_case():
    # two training points per class on the axes; the test point is nearest to class 1's but class 0 has two close
    train = torch.tensor([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0]])
    ytr = torch.tensor([0, 0, 1])
    test = F.normalize(torch.tensor([[0.6, 0.8]]), dim=-1)
    assert E.knn_classify(train, ytr, test, 2, k=1, temperature=0.07).tolist() == [0]  # 0.96*0.6+0.28*0.8 = 0.8
    assert E.knn_classify(train, ytr, test, 2, k=3, temperature=1.0).tolist() == [0]   # two votes beat one
    assert E.knn_classify(train, ytr, test, 2, k=3, temperature=0.01).tolist() == [0]
    v = E.video_features(torch.tensor([[[2.0, 0.0], [0.0, 5.0]]]))  # views normalised before averaging
    assert torch.allclose(v, F.normalize(torch.tensor([[1.0, 1.0]]), dim=-1))
