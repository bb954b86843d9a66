"""
eval_linear.py -- linear evaluation of a frozen self-supervised video encoder (a CVRL or LSS checkpoint, or the same
network with fresh random weights as the baseline).

The protocol (CVRL's, cvrl.md §6.1; the SVT/LSS probe in lss.md §6 differs only in details noted below):
  1. freeze the backbone: eval mode (BatchNorm uses its running statistics), no gradients;
  2. extract features once and cache them on disk
       train: `--train-views` views per training video, each a random clip (data.RandomClip) with a random resized
              crop (area 0.3-1, aspect 0.5-2) and a flip -- CVRL's linear-eval augmentation, no colour jitter
              (cvrl.md §2.5); every view is its own training sample for the classifier;
       test:  `--test-clips` K uniformly spaced clips x `--crops` spatial crops per video (CVRL/SlowFast: 10 x 3);
  3. L2-normalise the feature (CVRL's normalize_feature), standardise each dimension with the training set's mean
     and std (see LinearProbe: an affine map the linear layer could absorb, there so SGD fits every checkpoint --
     random-init features included -- in the same number of epochs), and train ONE linear layer (weight
     N(0, 0.01), bias 0) with softmax cross-entropy, SGD momentum 0.9, linear warmup + cosine lr, no weight decay
     by default (CVRL's official config);
  4. predict a test video by averaging the softmax probabilities of its K x crops views (CVRL's official
     `inference_step`; SVT sums scores instead, which gives the same argmax for softmax scores) and report
     top-1 / top-5 in percent over the test videos that could be decoded.

What is not CVRL's recipe: CVRL trains the linear layer on freshly augmented clips every epoch (100 epochs) with
lr 32 at batch 1024. Here the features of a fixed number of augmented views per video are computed once and the
classifier trains on those (the backbone is frozen, so this is the same model; only the augmentation is finite), and
the lr is not fixed but chosen on 10% of the training videos held out (see `choose_hyperparameters`). The test
protocol differs in two defaults: 10 clips of a 48-frame synthetic video would overlap almost entirely, so
`--test-clips` is 4 (pass 10 for Kinetics/UCF101/HMDB51 as in the paper); and test crops are `--size` pixels, the
training input size, where CVRL tests at 256 after training at 224 (pass `--test-size`). On a square canvas (the
synthetic default) the 3 crops would be the same pixels, so 1 is used and the output says so.

Commands
    # evaluate a run on its own data (a synthetic run needs no data flags); features go to RUN/features/
    python eval_linear.py --ckpt runs/cvrl/checkpoint.pt --json runs/cvrl/linear.json
    # the baseline: the same network with random weights, through the same protocol
    python eval_linear.py --ckpt runs/cvrl/checkpoint.pt --random-init --json runs/cvrl/linear_random.json
    # only classifier settings changed: the cached features are reused, this takes seconds
    python eval_linear.py --ckpt runs/cvrl/checkpoint.pt --lr 3 --epochs 200
    # a Kinetics-pretrained R3D-50 on UCF101 split 1, paper's test views, 32 frames (on a GPU)
    python eval_linear.py --ckpt runs/k400/checkpoint.pt --dataset ucf101 --data UCF-101/ \\
        --annotations ucfTrainTestlist/ --fold 1 --frames 32 --stride 2 --size 224 --canvas 256 340 \\
        --test-clips 10 --crops 3 --batch-size 64 --workers 8

Output: a table (top-1, top-5, counts, per-class accuracy, skipped files) and, with `--json OUT`,
    {"top1": %, "top5": %, "knn_top1": %, "retrieval_recall": {"1", "5", "10", "20": %}, "num_train": videos,
     "num_test": videos, "num_classes": int,
     "skipped": [{"split", "path", "reason"}], "per_class": {class: top-1 % or null}, "random_init": bool,
     "ckpt": path, "method": "cvrl" | "lss", "arch": str, "step": int | null, "feature_dim": int,
     "views": {frames, stride, size, test_size, canvas, train_views, test_clips, crops, train_crop_area, ...},
     "classifier": {lr, weight_decay, epochs, batch_size, heldout_videos, sweep: [...]},
     "dataset": {dataset, data, annotations, fold, synthetic}, "seconds": {extract_train, extract_test, classifier}}
top1/top5/per_class are percentages (0-100) over test VIDEOS; num_* count videos whose features were computed.

The backbone comes from the method's own file: `importlib.import_module(method).build_backbone(config)` returns an
nn.Module with `feature_dim` that takes float clips in [0, 1], (B, C, T, H, W), and returns (B, feature_dim); the
checkpoint's "backbone" entry is its state dict (for LSS: the teacher, as SVT evaluates it).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data
from data import SyntheticWorld
import training

# checkpoint "method" -> the module that defines build_backbone(config). A plain dict: two methods, two files.
METHODS = {"cvrl": "cvrl", "lss": "lss"}

# Bump when the feature extraction below changes what it computes: old cache files then stop matching. The method's
# code (its backbone's forward) is NOT part of the cache key; after editing it, pass --no-cache or delete RUN/features.
FEATURES_VERSION = 1

# ----------------------------------------------------------------------------- the frozen backbone

def load_checkpoint(path) -> dict:
    """training.load_checkpoint (weights_only=True: a pickle that would run code is refused), then: is it ours?"""
    ckpt = training.load_checkpoint(path)
    if not isinstance(ckpt, dict) or not {"method", "config", "backbone"} <= set(ckpt):
        keys = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SystemExit(f"error: {path} is not a cvrl.py/lss.py checkpoint: it needs 'method', 'config' and "
                         f"'backbone', it has {keys}")
    return ckpt


def import_method(method: str):
    """The method's module, which must define build_backbone(config: dict) -> nn.Module."""
    if method not in METHODS:
        raise SystemExit(f"error: unknown method {method!r} in the checkpoint; expected one of {sorted(METHODS)}")
    module = importlib.import_module(METHODS[method])
    if not hasattr(module, "build_backbone"):
        raise SystemExit(f"error: {module.__name__}.py has no build_backbone(config) yet, so its checkpoints cannot "
                         f"be evaluated; it must return the network whose state dict is the checkpoint's 'backbone'")
    return module


def build_frozen_backbone(module, ckpt: dict, random_init: bool, seed: int) -> nn.Module:
    """The checkpoint's network, frozen. `random_init`: the same network with the weights build_backbone draws
    under torch.manual_seed(seed), the checkpoint's weights NOT loaded (the baseline every SSL number is read
    against: how much of the accuracy does the architecture + linear probe get with no pretraining at all?)."""
    torch.manual_seed(seed)
    backbone = module.build_backbone(ckpt["config"])
    if not random_init:
        try:
            backbone.load_state_dict(ckpt["backbone"])  # strict: a key or shape mismatch is an error, never ignored
        except RuntimeError as e:
            raise SystemExit(f"error: the checkpoint's backbone does not fit {type(backbone).__name__} built from its "
                             f"config: {str(e).splitlines()[0]} ...")
    backbone.eval()  # BatchNorm with running statistics, dropout off: the frozen network of CVRL's eval (cvrl.md §8.4)
    backbone.requires_grad_(False)
    return backbone


# ----------------------------------------------------------------------------- feature extraction

@dataclass
class RandomClips:
    """`n` independent data.RandomClip draws from one video: the training views' clips (data.py sampler interface).
    A dataclass so DataLoader workers can pickle it."""
    frames: int
    stride: int
    n: int

    def __call__(self, num_frames, fps, rng):
        one = data.RandomClip(self.frames, self.stride)
        return [one(num_frames, fps, rng)[0] for _ in range(self.n)]


def train_augment_config() -> data.AugmentConfig:
    """CVRL's linear-eval training augmentation (cvrl.md §2.5): random resized crop area 0.3-1, aspect 0.5-2, flip.
    No colour jitter, grayscale, blur or solarize."""
    return data.AugmentConfig(area=(0.3, 1.0), aspect=(0.5, 2.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0, blur_p=0.0,
                              solarize_p=0.0)


def video_generator(seed: int, index: int) -> torch.Generator:
    """The augmentation's random stream for one video. Per video, not per batch: a video's views then do not depend
    on the batch size or the number of workers, so those may change without invalidating cached features."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, 7, index]).generate_state(1)[0]))


@torch.inference_mode()
def embed(backbone: nn.Module, x: torch.Tensor, chunk: int, device: torch.device) -> torch.Tensor:
    """float clips (N, C, T, H, W) in [0, 1] -> features (N, D) float32 on the CPU, `chunk` clips per forward."""
    out = []
    for i in range(0, len(x), chunk):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            out.append(backbone(x[i:i + chunk].to(device)).float().cpu())
    return torch.cat(out)


@torch.inference_mode()
def extract_features(backbone, videos: data.VideoList, split: str, cfg: Config, device,
                     dtype: torch.dtype = torch.float16) -> dict:
    """Features of every decodable video of a split, all its views kept apart:
        {"features": float16 (num_videos, views, D), "labels": (num_videos,), "index": (num_videos,) positions in
         `videos`, "skipped": [{"split", "path", "reason"}]}.
    Unreadable videos come back from data.VideoDataset(resample=False) as failed items; they are listed, never
    dropped silently, and num_videos counts only the others. A clip longer than its video repeats the last frame
    (data.clip_indices) instead of rejecting short test videos, which would change the test set."""
    train = split == "train"
    if train:
        sampler, views = RandomClips(cfg.frames, cfg.stride, cfg.train_views), cfg.train_views
    else:
        sampler, views = data.UniformClips(cfg.frames, cfg.stride, cfg.test_clips), cfg.test_clips * cfg.crops
    dataset = data.VideoDataset(videos, sampler, canvas=cfg.canvas, resample=False, min_frames=1)
    videos_per_batch = max(1, cfg.batch_size // views)  # a loader batch is about one forward pass of clips
    loader = data.make_loader(dataset, videos_per_batch, cfg.workers, shuffle=False, drop_last=False, seed=cfg.seed)
    aug = train_augment_config()
    feats, labels, index, skipped = [], [], [], []
    for batch in tqdm(loader, desc=f"{split} features", unit="batch", dynamic_ncols=True):
        for i, msg in zip(batch["failed"], batch["bad"]):  # resample=False: exactly one message per failed item
            path = videos.paths[i]
            reason = msg[len(path) + 2:] if msg.startswith(path + ": ") else msg
            skipped.append({"split": split, "path": path, "reason": reason})
            tqdm.write(f"skipped unreadable {split} video: {path}: {reason}")
        if len(batch["index"]) == 0:
            continue
        video = batch["video"].to(device, non_blocking=True)   # (B, K, T, H, W, 3) uint8, K clips per video
        B, K = video.shape[:2]
        clips = data.to_bcthw(video.flatten(0, 1))             # (B*K, C, T, H, W), the K clips of a video adjacent
        if train:
            # one augment call per video, with that video's own generator (see video_generator)
            x = torch.cat([data.augment(clips[b * K:(b + 1) * K], cfg.size, aug,
                                        video_generator(cfg.seed, int(batch["index"][b]))) for b in range(B)])
        else:
            x = data.spatial_crops(clips, cfg.test_size, cfg.crops)  # (B*K*crops, C, T, s, s), crops of a clip adjacent
        f = embed(backbone, x, cfg.batch_size, device)          # (B*views, D)
        feats.append(f.view(B, views, -1).to(dtype))            # (B, views, D): clip-major, crop-minor
        labels.append(batch["label"])
        index.append(batch["index"])
    if not feats:
        raise SystemExit(f"error: none of the {len(videos)} {split} videos could be decoded; run "
                         f"`python scripts/dataset.py check --dataset {cfg.dataset} --data {cfg.data} ...` to see why")
    # float16 on disk and in memory: Kinetics' test set at 30 views x 2048-d is 2.4 GB instead of 4.9; the linear
    # probe normalises the feature anyway and is insensitive to the lost mantissa bits. (scripts/finetune.py asks
    # for float32: its head reads the raw feature, and nothing is cached.)
    return {"features": torch.cat(feats), "labels": torch.cat(labels), "index": torch.cat(index), "skipped": skipped}


# ----------------------------------------------------------------------------- linear classifier

# Learning rates tried on the held-out training videos when --lr is not given. The probe standardises its inputs
# (LinearProbe), so every feature dimension has unit variance whatever the network: the useful lrs then sit in one
# range for all checkpoints. Only the lr is swept; weight decay stays at --weight-decay (0, CVRL's): a second axis
# would multiply the cost of a sweep whose held-out set is a few dozen videos on the synthetic data.
LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
FALLBACK_LR = 0.3  # when nothing can be held out
WARMUP_FRACTION = 0.05  # linear warmup over the first 5% of steps (CVRL: 5 of 100 epochs)


class LinearProbe(nn.Linear):
    """One linear layer on standardised features: (x - mean) / std with the training set's per-dimension mean and
    std, then W x + b. The standardisation is an affine reparametrisation the linear layer could absorb, so the
    probe is still exactly a linear classifier; it is there for the optimiser. Features of a randomly initialised
    network are nearly collinear after L2 normalisation (tiny spread around one direction), and plain SGD in a
    fixed number of epochs then under-fits them badly, which would make the random-init baseline look worse than
    it is and flatter every method compared with it."""

    def __init__(self, in_features, num_classes):
        super().__init__(in_features, num_classes)
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))

    def forward(self, x):
        return super().forward((x - self.mean) / self.std)


def train_linear(x: torch.Tensor, y: torch.Tensor, num_classes: int, lr: float, weight_decay: float = 0.0,
                 epochs: int = 100, batch_size: int = 256, seed: int = 0, device="cpu") -> nn.Linear:
    """Softmax regression on features x (N, D), labels y (N,): L2-normalise, standardise (LinearProbe), one linear
    layer (weight N(0, 0.01), bias 0, as CVRL/DINO/SVT), SGD momentum 0.9 (no nesterov), lr warmup then cosine."""
    device = torch.device(device)
    threads = torch.get_num_threads()
    if device.type == "cpu":
        # The steps are small matrix products: on the CPU, torch's thread pool costs more than it saves (on busy
        # cores, many times more), so run single-threaded.
        torch.set_num_threads(1)
    try:
        return _train_linear(x, y, num_classes, lr, weight_decay, epochs, batch_size, seed, device)
    finally:
        torch.set_num_threads(threads)


def _train_linear(x, y, num_classes, lr, weight_decay, epochs, batch_size, seed, device):
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(x.float(), dim=1).to(device)  # (N, D), unit norm: CVRL's normalize_feature=True
    y = y.to(device)
    clf = LinearProbe(x.shape[1], num_classes)
    with torch.no_grad():
        clf.weight.normal_(0.0, 0.01, generator=g)
        clf.bias.zero_()
        clf.mean.copy_(x.mean(0))
        clf.std.copy_(x.std(0).clamp_min(1e-6))
    clf.to(device)
    opt = torch.optim.SGD(clf.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    total = epochs * steps_per_epoch
    warmup = int(WARMUP_FRACTION * total)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=g).to(device)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            step_lr = lr * (step + 1) / warmup if step < warmup else \
                lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
            for group in opt.param_groups:
                group["lr"] = step_lr
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"the linear classifier diverged (loss {loss.item()}) at lr {lr}; try a lower --lr")
    return clf.cpu()


@torch.no_grad()
def view_averaged_probs(clf: nn.Linear, feats: torch.Tensor) -> torch.Tensor:
    """feats (N, V, D): V views per video -> (N, C), the mean over views of softmax(clf(normalised view feature)).
    Averaging probabilities (CVRL's official inference_step) rather than logits: one very confident wrong view
    moves the average by at most 1/V."""
    out = []
    for chunk in feats.split(1024):  # bounded memory: Kinetics' test set is 20k videos x 30 views
        out.append(average_views(clf(F.normalize(chunk.float(), dim=-1))))  # (n, V, C) logits -> (n, C)
    return torch.cat(out)


def average_views(logits: torch.Tensor) -> torch.Tensor:
    """(N, V, C) logits of V views per video -> (N, C): the mean over views of the softmax probabilities."""
    return logits.float().softmax(-1).mean(1)


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(N,) bool: the label is among the k most probable classes (k capped at the number of classes)."""
    top = probs.topk(min(k, probs.shape[1]), dim=1).indices  # (N, k)
    return (top == labels[:, None]).any(1)


def between_video_cosine(feats: torch.Tensor) -> float | None:
    """feats (N, views, D) -> mean cosine between the view-averaged features of two DIFFERENT videos. Near 1: every
    video gets nearly the same feature (a collapsed or untrained network; LSS's teacher cannot tell videos apart
    then, see README Results). The probe standardises each dimension, so it can still read small differences;
    this says how small they are. sum_{i != j} x_i.x_j = |sum_i x_i|^2 - N for unit x_i: O(N D), no N x N matrix."""
    n = feats.shape[0]
    if n < 2:
        return None
    x = F.normalize(feats.double().mean(dim=1), dim=-1)  # (N, D) unit, one per video; float64: |sum|^2 ~ N^2
    total = x.sum(dim=0)  # (D,)
    return ((total @ total - (x * x).sum()) / (n * (n - 1))).item()


def video_features(feats: torch.Tensor) -> torch.Tensor:
    """(N, V, D) view features -> (N, D): each view L2-normalised, averaged over the video's views, re-normalised."""
    return F.normalize(F.normalize(feats.float(), dim=-1).mean(dim=1), dim=-1)


def knn_classify(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, num_classes: int, k: int = 20,
                 temperature: float = 0.07) -> torch.Tensor:
    """DINO's weighted k-NN classifier (eval_knn.py): each test feature's k most cosine-similar training features
    vote for their class with weight exp(cosine / T). Unit (N, D) features -> (N_test,) predicted classes."""
    preds = []
    for chunk in test.split(1024):  # bounded memory: (1024, N_train) similarities at a time
        sim, idx = (chunk @ train.T).topk(min(k, len(train)), dim=1)  # (n, k)
        votes = torch.zeros(len(chunk), num_classes, dtype=sim.dtype)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def retrieval_recall(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                     ks=(1, 5, 10, 20)) -> dict:
    """Video retrieval (the SSL literature's UCF101/HMDB51 protocol): each test video's feature queries the training
    videos; recall@k = % of test videos with a training video of their class among their k nearest (cosine)."""
    kmax = min(max(ks), len(train))
    hits = []
    for chunk, labels in zip(test.split(1024), test_labels.split(1024)):
        idx = (chunk @ train.T).topk(kmax, dim=1).indices  # (n, kmax), nearest first
        hits.append(train_labels[idx] == labels[:, None])
    hits = torch.cat(hits)
    return {str(k): round(100.0 * hits[:, :min(k, kmax)].any(dim=1).float().mean().item(), 2) for k in ks}


def split_heldout(labels: torch.Tensor, fraction: float, seed: int):
    """Videos -> (fit, heldout) index tensors: per class, round(fraction * n) of its videos held out, at least 1
    (tiny datasets still get a sweep) and at most n - 1 (every class keeps a training video). By video, never by
    view: two views of one video are near-duplicates, and splitting them would leak the held-out answer into
    training."""
    rng = np.random.default_rng([seed, 11])
    held = []
    for c in labels.unique().tolist():
        idx = np.flatnonzero(labels.numpy() == c)
        n_held = min(max(1, round(fraction * len(idx))), len(idx) - 1) if fraction > 0 else 0
        held += list(rng.permutation(idx)[:n_held])
    mask = np.zeros(len(labels), bool)
    mask[held] = True
    return torch.from_numpy(np.flatnonzero(~mask)), torch.from_numpy(np.flatnonzero(mask))


def flatten_views(feats: torch.Tensor, labels: torch.Tensor):
    """(N, V, D) features and (N,) labels -> (N*V, D) samples and (N*V,) labels: each view is a training sample."""
    N, V, D = feats.shape
    return feats.reshape(N * V, D), labels.repeat_interleave(V)


def choose_hyperparameters(feats, labels, num_classes, cfg: Config, device):
    """Pick the lr from LR_GRID (unless --lr is given): train on the training videos minus a held-out 10% (per
    class, by video), score the held-out videos by view-averaged top-1 (ties: lower cross-entropy of the averaged
    probabilities), keep the best. Returns (lr, sweep records, number of held-out videos)."""
    if cfg.lr is not None:
        return cfg.lr, [], 0
    fit, held = split_heldout(labels, cfg.heldout, cfg.seed)
    if len(held) == 0:
        print(f"warning: no training video held out (--heldout 0, or one video per class); using lr {FALLBACK_LR}",
              file=sys.stderr)
        return FALLBACK_LR, [], 0
    x, y = flatten_views(feats[fit], labels[fit])
    sweep = []
    for lr in LR_GRID:
        try:
            clf = train_linear(x, y, num_classes, lr, cfg.weight_decay, cfg.epochs, cfg.clf_batch_size, cfg.seed,
                               device)
        except FloatingPointError:
            sweep.append({"lr": lr, "heldout_top1": None, "heldout_loss": None})
            continue
        probs = view_averaged_probs(clf, feats[held])
        top1 = 100.0 * topk_correct(probs, labels[held], 1).float().mean().item()
        loss = F.nll_loss(probs.clamp_min(1e-12).log(), labels[held]).item()
        sweep.append({"lr": lr, "heldout_top1": top1, "heldout_loss": loss})
    ok = [r for r in sweep if r["heldout_top1"] is not None]
    if not ok:
        raise SystemExit("error: the linear classifier diverged at every lr of the sweep; are the features finite?")
    best = max(ok, key=lambda r: (r["heldout_top1"], -r["heldout_loss"]))
    return best["lr"], sweep, len(held)


# ----------------------------------------------------------------------------- the feature cache

def cache_key_fields(cfg: Config, split: str, backbone_sha1: str, method: str, arch, videos: data.VideoList) -> dict:
    """Everything the features of `split` depend on -- and nothing else, so that classifier settings (lr, epochs,
    weight decay, held-out fraction), batch size, workers and the cache location can change freely:
      the weights (content hash of the backbone actually used; random-init flag and seed), the method and arch,
      the data (dataset name, root, annotations, fold, nuisance, and the list of videos with their labels),
      the views (frames, stride, canvas, seed, and per split the train views + crop size + augmentation, or the
      test clips + crops + test crop size), the precision (bf16 autocast on CUDA, fp32 on CPU), FEATURES_VERSION."""
    listing = hashlib.sha1("\n".join(f"{p}\t{l}" for p, l in zip(videos.paths, videos.labels)).encode()).hexdigest()
    keys = {
        "version": FEATURES_VERSION, "split": split,
        "backbone_sha1": backbone_sha1, "random_init": cfg.random_init,
        "init_seed": cfg.seed if cfg.random_init else None,
        "method": method, "arch": arch,
        "dataset": cfg.dataset, "data": os.path.abspath(cfg.data) if cfg.data else None,
        "annotations": os.path.abspath(cfg.annotations) if cfg.annotations else None, "fold": cfg.fold,
        "synthetic": asdict(cfg.synthetic) if cfg.dataset == "synthetic" else None, "videos_sha1": listing,
        "num_videos": len(videos),
        "frames": cfg.frames, "stride": cfg.stride, "canvas": list(cfg.canvas), "seed": cfg.seed,
        "precision": "bf16" if training.resolve_device(cfg.device).type == "cuda" else "fp32",
    }
    if split == "train":
        aug = train_augment_config()
        keys.update(train_views=cfg.train_views, size=cfg.size, area=list(aug.area), aspect=list(aug.aspect),
                    flip_p=aug.flip_p)
    else:
        keys.update(test_clips=cfg.test_clips, crops=cfg.crops, test_size=cfg.test_size)
    return keys


def cache_key(key_fields: dict) -> str:
    return hashlib.sha1(json.dumps(key_fields, sort_keys=True).encode()).hexdigest()[:20]


def cached_features(path: Path, key_fields: dict, compute):
    """Load `path` if it holds features for exactly `key_fields`, else compute() and write it atomically (a temporary
    file renamed into place: an interrupted run never leaves a half-written cache that a later run would trust)."""
    if path.exists():
        try:
            feats = torch.load(path, map_location="cpu", weights_only=True)
            if feats.get("key_fields") == key_fields:
                print(f"using cached features {path} ({tuple(feats['features'].shape)})")
                return feats
            print(f"warning: {path} was written for other settings; recomputing", file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            print(f"warning: cannot read cached features {path} ({type(e).__name__}); recomputing", file=sys.stderr)
    feats = compute()
    feats["key_fields"] = key_fields
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        training.save_checkpoint(path, feats)  # atomic, as every checkpoint
        print(f"cached features in {path}")
    except OSError as e:
        print(f"warning: cannot write the feature cache {path} ({e}); continuing without it", file=sys.stderr)
    return feats


# ----------------------------------------------------------------------------- config


@dataclass
class Config:
    # what to evaluate
    ckpt: str = ""                  # checkpoint of cvrl.py or lss.py (required)
    random_init: bool = False       # the baseline: the checkpoint's network with fresh weights (seeded by --seed)
    network: str = "backbone"       # which weights: backbone (the evaluated network; LSS: the teacher) | student (LSS)
    # data (None: the checkpoint's own settings when --dataset is not given, so a synthetic run needs no flags)
    dataset: str | None = None      # auto (from --data) | synthetic | folder | ucf101 | hmdb51 | kinetics
    data: str | None = None         # dataset root
    annotations: str | None = None  # UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, or Kinetics CSV
    fold: int | None = None         # UCF101/HMDB51 split number
    synthetic: SyntheticWorld = field(default_factory=SyntheticWorld)  # each knob: the checkpoint's unless given
    # views (None: the checkpoint's value)
    frames: int | None = None       # frames per clip (CVRL evaluates at 32 after pretraining at 16)
    stride: int | None = None       # frames between sampled frames
    size: int | None = None         # network input side for the training views (random resized crops)
    test_size: int | None = None    # test crop side; None: --size (CVRL: 256 at test after 224 in training)
    canvas: tuple | None = None     # decode size H W: frames are scaled to cover it and centre-cropped
    train_views: int = 2            # augmented views (random clip + crop + flip) per training video, each a sample
    test_clips: int = 4             # uniformly spaced clips per test video (paper: 10; 4 for 48-frame synthetic videos)
    crops: int = 3                  # spatial crops per test clip: 1 (centre) or 3 (start/centre/end of the long side)
    # linear classifier
    epochs: int = 100               # passes over the cached training features (CVRL: 100, SVT: 20)
    lr: float | None = None         # classifier lr; None: chosen from LR_GRID on held-out training videos
    weight_decay: float = 0.0       # classifier weight decay (CVRL: 0)
    clf_batch_size: int = 256       # features per classifier step
    heldout: float = 0.1            # fraction of training videos held out (per class) to choose the lr
    # k-NN and retrieval on the same features (no training)
    knn_k: int = 20                 # neighbours of the weighted k-NN classifier (DINO: 20)
    knn_temperature: float = 0.07   # vote weight exp(cosine / T) (DINO: 0.07)
    # machinery
    batch_size: int = 32            # clips per backbone forward pass during feature extraction
    workers: int = 2                # DataLoader decode processes
    device: str = "auto"            # auto | cpu | cuda (bf16 autocast on cuda)
    seed: int = 0                   # views, random-init weights, held-out split and classifier init
    cache: str | None = None        # feature cache dir; None: features/ next to the checkpoint
    no_cache: bool = False          # neither read nor write cached features
    json: str | None = None         # write the results here


FOLDER_KINDS = ("synthetic", "folder", "unlabeled", "auto")  # datasets whose kind the folder alone decides
DATA_FIELDS = ("dataset", "data", "annotations", "fold")  # flags owned by add_data_args (shared with cvrl.py)
NONE_TYPES = {"frames": int, "stride": int, "size": int, "test_size": int, "lr": float, "cache": str,
              "json": str}  # fields whose default None hides their type
CHOICES = {"crops": [1, 3], "device": ["auto", "cpu", "cuda"]}


def add_data_args(p: argparse.ArgumentParser):
    """The data flags of the scripts that build their flags by hand (this one, scripts/finetune.py, scripts/dataset.py):
    --dataset, --data, --annotations, --fold, with the meaning the dataclass flags of cvrl.py and lss.py give them."""
    p.add_argument("--dataset", default="auto", choices=["auto", *data.DATASETS],
                   help="auto: decided from --data (classes.txt: synthetic; train/ + test/: folder; else unlabeled)")
    p.add_argument("--data", default=None, help="dataset root (videos); --dataset synthetic: where to generate "
                                                "(default: the cache)")
    p.add_argument("--annotations", default=None, help="UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, Kinetics CSV")
    p.add_argument("--fold", type=int, default=1, choices=[1, 2, 3], help="UCF101/HMDB51 split number")
    return p


def add_config_args(p: argparse.ArgumentParser, config_cls, none_types: dict, choices: dict, required=()):
    """Kebab-case flags (--train-views 2) for every field of `config_cls`, help from each field's comment; the data
    flags come from add_data_args, with dataset and fold defaulting to None ("not given": take the checkpoint's;
    data.py's defaults would silently pick synthetic, fold 1). Not training.parse_config: here most settings default to
    "whatever the checkpoint says" (None), which needs explicit types (`none_types`), and the data flags must know
    whether they were given at all. scripts/finetune.py builds its flags with this too."""
    helps = training.field_helps(config_cls)
    add_data_args(p)
    p.set_defaults(dataset=None, fold=None)
    for f in fields(config_cls):
        if f.name in DATA_FIELDS:
            continue
        inner = training.nested(f)
        if inner is not None:  # the synthetic world: each knob a flag of its own, None = the checkpoint's
            inner_helps = training.field_helps(type(inner))
            for g in fields(inner):
                p.add_argument("--" + g.name.replace("_", "-"), type=type(g.default), default=None,
                               help=f"{inner_helps.get(g.name, '')} (default: the checkpoint's)")
            continue
        flag, default, h = "--" + f.name.replace("_", "-"), f.default, helps.get(f.name, "")
        if isinstance(default, bool):
            p.add_argument(flag, action="store_true", help=h)
        elif f.name == "canvas":
            p.add_argument(flag, type=int, nargs=2, default=None, metavar=("H", "W"), help=h)
        else:
            p.add_argument(flag, type=none_types.get(f.name) or type(default), default=default, help=h,
                           required=f.name in required, choices=choices.get(f.name))
    return p


def gather_nested(config_cls, values: dict) -> dict:
    """The parsed flags of add_config_args -> the fields of config_cls: a settings dataclass's flags gathered into
    the dict of those given (the checkpoint's settings fill in the rest, in resolve_config)."""
    for f in fields(config_cls):
        inner = training.nested(f)
        if inner is not None:
            given = {g.name: values.pop(g.name) for g in fields(inner)}
            values[f.name] = {k: v for k, v in given.items() if v is not None}
    return values


def parse_args(argv=None) -> Config:
    """The command line -> Config (see add_config_args); refuses values that cannot work."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Without --dataset, the data flags default to the checkpoint's own (a synthetic "
                                       "run needs none); --frames/--stride/--size/--canvas always default to the "
                                       "checkpoint's.")
    add_config_args(p, Config, NONE_TYPES, CHOICES, required=("ckpt",))
    a = p.parse_args(argv)
    cfg = Config(**gather_nested(Config, {k: tuple(v) if isinstance(v, list) else v for k, v in vars(a).items()}))
    for name in ("train_views", "test_clips", "epochs", "batch_size", "clf_batch_size", "knn_k"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= cfg.heldout < 1:
        p.error("--heldout must be in [0, 1)")
    return cfg


def resolve_config(cfg: Config, ckpt_cfg: dict) -> Config:
    """Fill every None with the checkpoint's setting. The data flags are inherited only as a whole: with --dataset
    given, --data/--annotations/--fold mean what the command line says (a checkpoint's UCF101 root is no root for
    HMDB51). --data alone after a run on a folder kind (synthetic, folder, unlabeled) is --dataset auto: the new
    folder's contents decide (never "generate the synthetic set into the user's folder"); after UCF101/HMDB51/
    Kinetics it keeps that kind and its annotations. Refuses a checkpoint config that lacks a view setting the
    command line does not give either."""
    def need(key):
        if key not in ckpt_cfg or ckpt_cfg[key] is None:
            raise SystemExit(f"error: the checkpoint's config has no {key!r}; pass --{key.replace('_', '-')}")
        return ckpt_cfg[key]

    if cfg.dataset is None and cfg.data is not None and ckpt_cfg.get("dataset", "synthetic") in FOLDER_KINDS:
        cfg = replace(cfg, dataset="auto")  # --data alone names another folder: its contents decide its kind
    if cfg.dataset is None:
        cfg = replace(cfg, dataset=ckpt_cfg.get("dataset", "synthetic"),
                      data=cfg.data if cfg.data is not None else ckpt_cfg.get("data"),
                      annotations=cfg.annotations if cfg.annotations is not None else ckpt_cfg.get("annotations"),
                      fold=cfg.fold if cfg.fold is not None else ckpt_cfg.get("fold", 1))
    else:
        cfg = replace(cfg, fold=1 if cfg.fold is None else cfg.fold)
    # the checkpoint's world, with the knobs given on the command line (a dict there; a Config built in code holds
    # the default SyntheticWorld: nothing given)
    given = cfg.synthetic if isinstance(cfg.synthetic, dict) else {}
    cfg = replace(cfg, synthetic=replace(data.synthetic_world(ckpt_cfg), **given))
    try:
        dataset, why = data.resolve_dataset(cfg.dataset, cfg.data)  # --dataset auto: from the folder
    except data.DatasetError as e:
        raise SystemExit(f"error: {e}")
    if why:
        print(why)
    cfg = replace(cfg, dataset=dataset,
                  frames=cfg.frames or int(need("frames")), stride=cfg.stride or int(need("stride")),
                  size=cfg.size or int(need("size")),
                  canvas=tuple(int(v) for v in (cfg.canvas or need("canvas"))))
    cfg = replace(cfg, test_size=cfg.test_size or cfg.size)
    if cfg.crops == 3 and cfg.canvas[0] == cfg.canvas[1]:
        # On a square canvas the short side IS the long side: start, centre and end crops are the same pixels.
        print(f"note: the canvas {cfg.canvas[0]}x{cfg.canvas[1]} is square, so 3 crops would be 3 copies of the "
              f"same view; using 1 (pass a non-square --canvas for distinct crops)")
        cfg = replace(cfg, crops=1)
    return cfg


# ----------------------------------------------------------------------------- main



def main(argv=None) -> dict:
    cfg = parse_args(argv)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(cfg.ckpt)
    method, ckpt_cfg = ckpt["method"], dict(ckpt["config"])
    module = import_method(method)
    cfg = resolve_config(cfg, ckpt_cfg)
    device = training.resolve_device(cfg.device)
    if cfg.network == "student":  # LSS's other network: its weights under the backbone's keys
        if not hasattr(module, "student_backbone_state") or "student" not in ckpt:
            raise SystemExit(f"error: --network student: {cfg.ckpt} ({method}) has no student network")
        ckpt = {**ckpt, "backbone": module.student_backbone_state(ckpt)}
    elif cfg.network != "backbone":
        raise SystemExit(f"error: --network must be backbone or student, got {cfg.network!r}")
    backbone = build_frozen_backbone(module, ckpt, cfg.random_init, cfg.seed).to(device)
    sha = training.state_dict_sha1(backbone.state_dict())
    arch = ckpt_cfg.get("arch")
    what = (f"RANDOM-INIT BASELINE: {method} {arch} with fresh weights (seed {cfg.seed}), checkpoint weights NOT "
            f"loaded" if cfg.random_init else f"{method} {arch} from {cfg.ckpt} (step {ckpt.get('step')}"
            f"{', the student' if cfg.network == 'student' else ''})")
    print(f"linear eval | {what} | feature {backbone.feature_dim}-d | {device}")
    print(json.dumps(asdict(cfg)))

    try:
        data.require_labels(cfg.dataset, cfg.data, "the linear probe",
                            f"Pass --data with such a ROOT. Without labels, `python scripts/neighbours.py --ckpt "
                            f"{cfg.ckpt}` shows which videos the features find similar.")
        splits = {s: data.load_split(cfg.dataset, cfg.data, cfg.annotations, cfg.fold, s, cfg.synthetic)
                  for s in ("train", "test")}
    except data.DatasetError as e:
        raise SystemExit(f"error: {e}")
    classes = splits["train"].classes
    if splits["test"].classes != classes:
        raise SystemExit(f"error: the train and test splits disagree on the classes ({len(classes)} vs "
                         f"{len(splits['test'].classes)})")
    cache_dir = Path(cfg.cache) if cfg.cache else Path(cfg.ckpt).resolve().parent / "features"
    feats, seconds = {}, {}
    for split, videos in splits.items():
        t = time.perf_counter()
        keys = cache_key_fields(cfg, split, sha, method, arch, videos)
        compute = lambda: extract_features(backbone, videos, split, cfg, device)  # noqa: E731
        feats[split] = compute() if cfg.no_cache else \
            cached_features(cache_dir / f"{split}-{cache_key(keys)}.pt", keys, compute)
        seconds[f"extract_{split}"] = round(time.perf_counter() - t, 2)
    missing = [{"split": s, "path": p, "reason": "listed in the split file but not on disk"}
               for s, v in splits.items() for p in v.missing]
    skipped = missing + feats["train"]["skipped"] + feats["test"]["skipped"]

    # classifier: choose the lr on held-out training videos, then retrain on all training videos with it
    t = time.perf_counter()
    ftr, ytr = feats["train"]["features"], feats["train"]["labels"]
    fte, yte = feats["test"]["features"], feats["test"]["labels"]
    lr, sweep, n_held = choose_hyperparameters(ftr, ytr, len(classes), cfg, device)
    x, y = flatten_views(ftr, ytr)
    clf = train_linear(x, y, len(classes), lr, cfg.weight_decay, cfg.epochs, cfg.clf_batch_size, cfg.seed, device)
    probs = view_averaged_probs(clf, fte)  # (num_test, C)
    correct1 = topk_correct(probs, yte, 1)
    correct5 = topk_correct(probs, yte, 5)
    seconds["classifier"] = round(time.perf_counter() - t, 2)
    cosine = between_video_cosine(fte)  # None with fewer than 2 test videos
    # k-NN and retrieval on the same frozen features: no training, so also a check for runs without labels to probe
    vtr, vte = video_features(ftr), video_features(fte)
    knn = knn_classify(vtr, ytr, vte, len(classes), cfg.knn_k, cfg.knn_temperature)
    recall = retrieval_recall(vtr, ytr, vte, yte)
    per_class = {}
    for c, name in enumerate(classes):
        m = yte == c
        per_class[name] = round(100.0 * correct1[m].float().mean().item(), 2) if m.any() else None

    result = {
        "top1": round(100.0 * correct1.float().mean().item(), 2),
        "top5": round(100.0 * correct5.float().mean().item(), 2),
        "num_train": len(ytr), "num_test": len(yte), "num_classes": len(classes),
        "skipped": skipped, "per_class": per_class, "random_init": cfg.random_init, "network": cfg.network,
        "ckpt": str(cfg.ckpt), "method": method, "arch": arch,
        "step": int(ckpt["step"]) if ckpt.get("step") is not None else None,
        "feature_dim": int(backbone.feature_dim),
        "between_video_cosine": None if cosine is None else round(cosine, 6),
        "knn_top1": round(100.0 * (knn == yte).float().mean().item(), 2),
        "knn": {"k": cfg.knn_k, "temperature": cfg.knn_temperature, "features": "view-averaged, L2-normalised"},
        "retrieval_recall": recall,
        "views": {"frames": cfg.frames, "stride": cfg.stride, "size": cfg.size, "test_size": cfg.test_size,
                  "canvas": list(cfg.canvas), "train_views": cfg.train_views, "test_clips": cfg.test_clips,
                  "crops": cfg.crops, "test_views": cfg.test_clips * cfg.crops,
                  "train_crop_area": list(train_augment_config().area), "test_average": "softmax probabilities"},
        "classifier": {"lr": lr, "lr_chosen_by": "given" if cfg.lr is not None else "held-out sweep",
                       "weight_decay": cfg.weight_decay, "epochs": cfg.epochs, "batch_size": cfg.clf_batch_size,
                       "heldout_videos": n_held, "sweep": sweep},
        "dataset": {"dataset": cfg.dataset, "data": cfg.data, "annotations": cfg.annotations, "fold": cfg.fold,
                    "synthetic": asdict(cfg.synthetic) if cfg.dataset == "synthetic" else None},
        "seconds": {**seconds, "total": round(time.perf_counter() - t0, 2)},
    }
    print_report(result, classes, yte)
    if cfg.json:
        Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
        Path(cfg.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {cfg.json}")
    return result


def print_report(r: dict, classes, test_labels):
    counts = torch.bincount(test_labels, minlength=len(classes)).tolist()
    v = r["views"]
    print(f"\n{'RANDOM-INIT BASELINE' if r['random_init'] else 'checkpoint'}: {r['method']} {r['arch']} | "
          f"{r['dataset']['dataset']} | {v['frames']} frames x stride {v['stride']}")
    print(f"views: train {v['train_views']} random clips + crops ({v['size']}px) per video | test {v['test_clips']} "
          f"clips x {v['crops']} crops ({v['test_size']}px), softmax averaged")
    if r["classifier"]["sweep"]:
        print("lr sweep on " + f"{r['classifier']['heldout_videos']} held-out training videos: " + ", ".join(
            f"{s['lr']:g}: {s['heldout_top1']:.1f}%" if s["heldout_top1"] is not None else f"{s['lr']:g}: diverged"
            for s in r["classifier"]["sweep"]))
    print(f"classifier lr {r['classifier']['lr']:g} ({r['classifier']['lr_chosen_by']}), "
          f"weight decay {r['classifier']['weight_decay']:g}, {r['classifier']['epochs']} epochs")
    n_skip = {s: sum(1 for k in r["skipped"] if k["split"] == s) for s in ("train", "test")}
    print(f"{'':24s}{'top-1':>8s}{'videos':>8s}")
    for (name, acc), n in zip(r["per_class"].items(), counts):
        print(f"  {name[:22]:22s}{'-' if acc is None else f'{acc:.1f}':>8s}{n:>8d}")
    if r["between_video_cosine"] is not None:
        print(f"test features: mean cosine between two videos {r['between_video_cosine']:.4f} (1: all the same)")
    print(f"k-NN top-1 {r['knn_top1']:.2f}% (k {r['knn']['k']}, T {r['knn']['temperature']:g}) | retrieval recall "
          + ", ".join(f"@{k} {v:.1f}%" for k, v in r["retrieval_recall"].items()))
    print(f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  | train videos {r['num_train']} (skipped "
          f"{n_skip['train']}) | test videos {r['num_test']} (skipped {n_skip['test']})")
    for s in r["skipped"]:
        print(f"  SKIPPED {s['split']:5s} {s['path']}: {s['reason']}")


if __name__ == "__main__":
    training.command(main)  # a diverged classifier at a given --lr: a message, not a traceback
