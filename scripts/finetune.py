"""
scripts/finetune.py -- fine-tune a self-supervised video encoder end to end on a labelled dataset (a cvrl.py or
lss.py checkpoint), or train the very same network from scratch with the very same recipe (--random-init: the
baseline every fine-tuning number is read against).

The claim it tests (CVRL, CVPR 2021, as reprinted in VideoMAE's Table 13; cvrl.md §7.2): a Kinetics-400-pretrained
R3D-50, fine-tuned end to end with 32-frame inputs, reaches 92.9% top-1 on UCF101 and 67.9% on HMDB51, far above
the same network trained from scratch. The linear probe (eval_linear.py) asks what the frozen features already
know; fine-tuning asks how good a starting point the weights are when everything may change.

The recipe (each value's source in brackets; [MG] = TF Model Garden `official/vision/configs/video_classification.py`,
experiment `video_classification_ucf101`, the generic fine-tuning config CVRL's code base ships; there is no official
CVRL fine-tuning config, cvrl.md §6.2):
  network   the checkpoint's backbone, rebuilt and loaded by eval_linear.py's functions (method.build_backbone(config)
            + its "backbone" state dict), UNFROZEN, then dropout (p 0.2 [MG]) and a new linear layer on the pooled
            feature (weight N(0, 0.01), bias 0: the linear probe's init; [MG]'s initialiser was not checked).
            BatchNorm (CVRL's R3D) runs in train mode and updates its running statistics (momentum 0.1 = Keras 0.9
            [MG]); per process, not synchronised (use_sync_bn False in [MG]).
  train     one random clip per video per epoch (data.RandomClip), random resized crop (area 0.49-1, aspect 0.5-2
            [MG DataConfig defaults]) + horizontal flip, drawn once per clip and applied to all its frames; no colour
            augmentation. Inputs in [0, 1], no mean/std normalisation (each method's backbone does its own: LSS's
            applies CLIP's).
  optimiser SGD, momentum 0.9, Nesterov [MG]; lr 0.8 at a batch of 64 videos [MG], scaled linearly with the global
            batch; linear warmup 5 epochs [MG] then cosine to 0; weight decay 1e-4 [MG: L2 1e-4] on conv/linear
            weights only (Keras kernel regularisers: BN and biases are not decayed); softmax cross-entropy, no label
            smoothing [MG]; 100 epochs [MG]; bf16 autocast on CUDA [MG: bfloat16].
  test      `--test-clips` uniformly spaced clips x `--crops` spatial crops per test video (data.UniformClips,
            data.spatial_crops, through eval_linear.extract_features), softmax averaged over the views (CVRL's
            official inference; eval_linear.average_views); top-1 / top-5 over the test videos that could be decoded.
  baseline  --random-init: build_backbone's own initialisation under torch.manual_seed(--seed), checkpoint weights NOT
            loaded, everything else identical (head, recipe, steps, seeds).

Differences from the paper (what is reconstructed). CVRL's paper gives the fine-tuning numbers but, as far as
cvrl.md could find, not the recipe; the values above are Model Garden's generic UCF101 classification config, which
is what the CVRL code base would run. Known deviations from that config: it validates on random clips
(is_training=True on the test split, a quirk); here the paper's multi-view test is used (10 clips x 3 crops at 256 px
for UCF101/HMDB51: pass --test-clips 10 --crops 3 --test-size 256). [MG] samples clips at 32 x stride 2 and 224 px
(CVRL fine-tunes with 32 frames [VideoMAE]); here --frames/--stride/--size/--canvas default to the checkpoint's
pretraining views and the paper-scale command passes 32 x 2 at 224. Whether the paper averaged 3 splits or used
split 1 is not known (--fold picks one). For LSS there is no fine-tuning recipe at all (neither LSS's nor SVT's was
retrieved); ViTs are usually fine-tuned with AdamW at a small lr, so pass --optimizer adamw --lr 1e-4 (a choice, not
a source). The CPU defaults below are smaller than the recipe (--epochs 30, --batch-size 16, --warmup-epochs 2,
--test-clips 4) so that `python scripts/finetune.py` takes about a minute on 2 cores (68 s with one thread on a busy
2-core VM: 900 steps, then 400 test videos); the recipe's lr scaling rule is kept, so --batch-size 16 trains at lr
0.2.

Commands
    # CPU, after `python cvrl.py` (its checkpoint and its synthetic dataset; about a minute on 2 cores)
    python scripts/finetune.py                                         # -> runs/cvrl/finetune/finetune.json
    python scripts/finetune.py --random-init                           # the baseline: same network from scratch
    # the same on 2 processes (gloo on CPU, NCCL on GPUs): --batch-size is per process
    torchrun --standalone --nproc_per_node=2 scripts/finetune.py --batch-size 8
    # smoke test (seconds)
    python scripts/finetune.py --epochs 1 --max-steps 2 --test-clips 1 --out runs/ft_smoke

    # one GPU, UCF101 split 1, a Kinetics-pretrained R3D-50, the recipe at its own batch size
    python scripts/finetune.py --ckpt runs/k400/checkpoint.pt --dataset ucf101 --data UCF-101 \\
        --annotations ucfTrainTestlist --fold 1 --frames 32 --stride 2 --size 224 --canvas 256 340 \\
        --batch-size 64 --epochs 100 --warmup-epochs 5 --test-clips 10 --crops 3 --test-size 256 --workers 12
    # paper scale on 8 GPUs (global batch 64 = 8 x 8, so the lr stays 0.8), and the from-scratch baseline
    torchrun --standalone --nproc_per_node=8 scripts/finetune.py --ckpt runs/k400/checkpoint.pt --dataset ucf101 \\
        --data UCF-101 --annotations ucfTrainTestlist --fold 1 --frames 32 --stride 2 --size 224 --canvas 256 340 \\
        --batch-size 8 --epochs 100 --warmup-epochs 5 --test-clips 10 --crops 3 --test-size 256 --workers 8
    # ... the same command with --random-init
    # HMDB51: --dataset hmdb51 --data hmdb51 --annotations testTrainMulti_7030_splits
    # an LSS checkpoint (a ViT): AdamW at a small lr
    python scripts/finetune.py --ckpt runs/lss/checkpoint.pt --optimizer adamw --lr 1e-4

Re-running a command with the same --out resumes from OUT/checkpoint.pt (same schedule, also mid-epoch, bit for bit
on the CPU); Ctrl-C saves first and exits 130. A finished run re-runs only the test.
Outputs in --out (default: a folder next to --ckpt, finetune/ or finetune-random-init/): checkpoint.pt (the
checkpoint's method and config, the fine-tuned "backbone" in build_backbone's layout -- so eval_linear.py reads it --
plus "head", "optimizer", "finetune" (this run's config)), config.json, log.jsonl (step, epoch, loss, acc, lr,
clips_per_s, data_wait), and the JSON (--json, default OUT/finetune.json):
    {"top1": %, "top5": %, "num_train": videos, "num_test": videos, "num_classes": int,
     "skipped": [{"split", "path", "reason"}], "per_class": {class: top-1 % or null}, "random_init": bool,
     "ckpt": path, "method": "cvrl" | "lss", "arch": str, "source_step": int | null, "init_backbone_sha1": str,
     "steps": int, "total_steps": int, "complete": bool, "final_train_loss": float, "final_train_acc": float,
     "recipe": {...}, "views": {...}, "dataset": {...}, "world_size": int, "seconds": {"train", "test", "total"}}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
from data import SyntheticWorld  # noqa: E402
import training  # noqa: E402
import eval_linear as E  # noqa: E402  (checkpoint loading, backbone rebuild, view settings, test views, averaging)

# Training augmentation: Model Garden's DataConfig defaults for classification (aug_min/max_area_ratio 0.49/1.0,
# aug_min/max_aspect_ratio 0.5/2.0) and a horizontal flip; no colour jitter, grayscale, blur or solarize.
TRAIN_AUG = data.AugmentConfig(area=(0.49, 1.0), aspect=(0.5, 2.0), flip_p=0.5, jitter_p=0.0, gray_p=0.0,
                               blur_p=0.0, solarize_p=0.0)
REFERENCE_BATCH = 64  # the batch size at which --lr is given ([MG]: lr 0.8 at a global batch of 64)

# ----------------------------------------------------------------------------- config


@dataclass
class Config:
    # what to fine-tune
    ckpt: str = "runs/cvrl/checkpoint.pt"  # checkpoint of cvrl.py or lss.py (default: what `python cvrl.py` writes)
    random_init: bool = False       # the baseline: the same network from scratch (fresh weights seeded by --seed)
    # data (None: the checkpoint's own settings when --dataset is not given, so a synthetic run needs no flags)
    dataset: str | None = None      # synthetic | folder | ucf101 | hmdb51 | kinetics
    data: str | None = None         # dataset root
    annotations: str | None = None  # UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, or Kinetics CSV
    fold: int | None = None         # UCF101/HMDB51 split number
    data_fraction: float = 1.0      # fine-tune on this class-stratified fraction of the labelled training videos
    synthetic: SyntheticWorld = field(default_factory=SyntheticWorld)  # each knob: the checkpoint's unless given
    # views (None: the checkpoint's value)
    frames: int | None = None       # frames per clip (CVRL fine-tunes at 32)
    stride: int | None = None       # frames between sampled frames (MG: 2)
    size: int | None = None         # training crop side (MG: 224)
    test_size: int | None = None    # test crop side; None: --size (paper: 256)
    canvas: tuple | None = None     # decode size H W: frames are scaled to cover it and centre-cropped
    test_clips: int = 4             # uniformly spaced clips per test video (paper: 10; 4 for 48-frame synthetic videos)
    crops: int = 3                  # spatial crops per test clip: 1 (centre) or 3 (paper: 3; 1 on a square canvas)
    # recipe
    epochs: int = 30                # passes over the training videos (MG: 100)
    batch_size: int = 16            # videos per process per step; global = batch_size x processes (MG: 64 global)
    optimizer: str = "sgd"          # sgd (MG: momentum 0.9, Nesterov) | adamw (for ViTs; not a source's recipe)
    lr: float = 0.8                 # peak lr at a global batch of 64, scaled linearly (MG: 0.8)
    warmup_epochs: float = 2.0      # linear warmup, then cosine to 0 (MG: 5 of 100)
    weight_decay: float = 1e-4      # on conv/linear weights only (MG: L2 1e-4)
    momentum: float = 0.9           # SGD momentum (MG: 0.9)
    dropout: float = 0.2            # dropout on the pooled feature, before the new linear layer (MG: 0.2)
    # machinery
    device: str = "auto"            # auto | cpu | cuda (bf16 autocast on cuda)
    workers: int = 2                # DataLoader decode processes per process
    seed: int = 0                   # head init, random-init weights, clip order, augmentation, dropout
    out: str | None = None          # output dir; None: next to --ckpt, finetune/ (or finetune-random-init/)
    json: str | None = None         # results JSON; None: OUT/finetune.json
    log_every: int = 10             # steps between log lines
    max_steps: int = 0              # stop after this many steps in total, then test (0 = no limit; tests, quick looks)


NONE_TYPES = {"frames": int, "stride": int, "size": int, "test_size": int, "out": str,
              "json": str}  # fields whose default None hides their type
CHOICES = {"crops": [1, 3], "device": ["auto", "cpu", "cuda"], "optimizer": ["sgd", "adamw"]}


def parse_args(argv=None) -> Config:
    """The command line -> Config, flags as eval_linear.py's (its add_config_args). Only what the flags say: the
    checkpoint fills the rest in main() (eval_linear.resolve_config)."""
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="Without --dataset, the data flags default to the checkpoint's own (a synthetic "
                                       "run needs none); --frames/--stride/--size/--canvas default to the "
                                       "checkpoint's pretraining views.")
    E.add_config_args(p, Config, NONE_TYPES, CHOICES)
    a = p.parse_args(argv)
    cfg = Config(**E.gather_nested(Config, {k: tuple(v) if isinstance(v, list) else v for k, v in vars(a).items()}))
    for name in ("epochs", "batch_size", "test_clips"):
        if getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("frames", "stride", "size", "test_size"):
        if getattr(cfg, name) is not None and getattr(cfg, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 < cfg.data_fraction <= 1:
        p.error(f"--data-fraction must be in (0, 1], got {cfg.data_fraction}")
    if not 0 <= cfg.dropout < 1:
        p.error(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if not cfg.lr > 0:
        p.error(f"--lr must be positive, got {cfg.lr}")
    if cfg.warmup_epochs < 0 or cfg.weight_decay < 0 or cfg.max_steps < 0 or cfg.log_every < 1:
        p.error("--warmup-epochs, --weight-decay and --max-steps must be >= 0, --log-every >= 1")
    return cfg


# ----------------------------------------------------------------------------- the network

class FineTuner(nn.Module):
    """backbone -> dropout -> linear: float clips in [0, 1], (B, C, T, H, W) -> logits (B, classes).
    The backbone is whatever the method's build_backbone returns (CVRL: R3D's pooled feature; LSS: the ViT's CLS
    feature), so both methods are fine-tuned through one code path."""

    def __init__(self, backbone: nn.Module, num_classes: int, dropout: float, seed: int):
        super().__init__()
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.feature_dim, num_classes)
        with torch.no_grad():  # the linear probe's init, from its own generator: independent of the backbone's
            self.head.weight.normal_(0.0, 0.01, generator=torch.Generator().manual_seed(seed))
            self.head.bias.zero_()

    def forward(self, x):
        return self.head(self.dropout(self.backbone(x)))


def build_model(module, ckpt: dict, num_classes: int, cfg: Config) -> FineTuner:
    """eval_linear's frozen backbone (the checkpoint's weights, or with --random-init build_backbone's own init under
    torch.manual_seed(--seed)), unfrozen, with the new head."""
    backbone = E.build_frozen_backbone(module, ckpt, cfg.random_init, cfg.seed)
    backbone.requires_grad_(True)  # fine-tuning: every weight trains
    return FineTuner(backbone, num_classes, cfg.dropout, cfg.seed)


def make_optimizer(model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """Two groups: conv/linear weights (ndim > 1) decayed, BN parameters and biases not (Keras kernel regularisers
    decay only kernels)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [dict(params=decay, weight_decay=cfg.weight_decay), dict(params=no_decay, weight_decay=0.0)]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=lr)


# ----------------------------------------------------------------------------- helpers

def default_out(cfg: Config, ckpt_cfg: dict) -> str:
    """Next to the checkpoint; another dataset than the checkpoint's gets its own folder (a different head)."""
    name = "finetune" + ("-random-init" if cfg.random_init else "")
    if cfg.dataset != ckpt_cfg.get("dataset", "synthetic"):
        name += f"-{cfg.dataset}"
    return str(Path(cfg.ckpt).parent / name)


def split_message(msg: str, split: str) -> dict:
    """data.VideoDataset's "path: reason" -> {"split", "path", "reason"}."""
    path, _, reason = msg.partition(": ")
    return {"split": split, "path": path, "reason": reason}


def gather_strings(items: list, world: int) -> list:
    """The union over processes of a list of strings (each rank sees only its shard's unreadable files)."""
    if world == 1:
        return sorted(set(items))
    everyone = [None] * world
    dist.all_gather_object(everyone, sorted(set(items)))
    return sorted({s for part in everyone for s in part})


# ----------------------------------------------------------------------------- main

def main(argv=None) -> dict | None:
    cfg = parse_args(argv)
    t0 = time.perf_counter()
    if not os.path.isfile(cfg.ckpt) and cfg.ckpt == Config.ckpt:
        raise SystemExit(f"error: no --ckpt given and {cfg.ckpt} does not exist; run `python cvrl.py` first (it writes "
                         f"it), or pass --ckpt RUN/checkpoint.pt of cvrl.py or lss.py")
    src = E.load_checkpoint(cfg.ckpt)  # a clear error for a missing file or a checkpoint of another kind
    method, src_cfg = src["method"], dict(src["config"])
    module = E.import_method(method)
    cfg = E.resolve_config(cfg, src_cfg)  # None -> the checkpoint's data and view settings
    cfg = replace(cfg, out=cfg.out or default_out(cfg, src_cfg))
    cfg = replace(cfg, json=cfg.json or str(Path(cfg.out) / "finetune.json"))

    rank, world, device = training.setup_distributed(cfg.device)
    master = rank == 0
    print0 = print if master else (lambda *a, **k: None)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"
    if master:
        out.mkdir(parents=True, exist_ok=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

    # data: the labelled training split (one random clip per video) and the test split (read after training)
    splits = {s: data.load_split(cfg.dataset, cfg.data, cfg.annotations, cfg.fold, s, cfg.synthetic)
              for s in ("train", "test")}
    if cfg.data_fraction < 1.0:  # fewer labels (the test split stays whole): where a pretrained start matters most
        splits["train"] = splits["train"].subset(cfg.data_fraction, seed=cfg.seed)
    classes = splits["train"].classes
    if splits["test"].classes != classes:
        raise SystemExit(f"error: the train and test splits disagree on the classes ({len(classes)} vs "
                         f"{len(splits['test'].classes)})")
    # min_frames=1: a video shorter than a clip repeats its last frame (data.clip_indices) instead of being dropped
    dataset = data.VideoDataset(splits["train"], data.RandomClip(cfg.frames, cfg.stride), canvas=cfg.canvas,
                                resample=True, min_frames=1)
    loader = data.make_loader(dataset, cfg.batch_size, cfg.workers, shuffle=True, drop_last=True, seed=cfg.seed,
                              rank=rank, world_size=world)
    steps_per_epoch = len(loader)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = round(cfg.warmup_epochs * steps_per_epoch)
    global_batch = cfg.batch_size * world
    lr = cfg.lr * global_batch / REFERENCE_BATCH  # linear scaling from the recipe's batch of 64

    # model: the checkpoint's backbone (or fresh weights), dropout, a new linear head
    model = build_model(module, src, len(classes), cfg)
    init_sha1 = training.state_dict_sha1(model.backbone.state_dict())  # which weights this run starts from
    model.to(device)
    channels_last = device.type == "cuda" and method == "cvrl"  # 3D convs: faster in NDHWC on GPUs (cvrl.py)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = make_optimizer(model, cfg, lr)

    # resume
    step, skipped = 0, []
    if ckpt_path.exists():
        ck = training.load_checkpoint(ckpt_path)
        if ck.get("trained_by") != "scripts/finetune.py":
            raise SystemExit(f"error: {ckpt_path} was not written by scripts/finetune.py (it is a "
                             f"{ck.get('method', 'unknown')!r} checkpoint of {ck.get('trained_by', 'its method')}); "
                             f"pass another --out")
        if ck["init_backbone_sha1"] != init_sha1:
            raise SystemExit(f"error: the run in {out} started from other backbone weights (another --ckpt, "
                             f"--random-init or --seed); use another --out, or the same flags")
        if ck["classes"] != classes:
            raise SystemExit(f"error: the run in {out} was trained on other classes ({len(ck['classes'])}); "
                             f"use another --out")
        training.check_resume_config(ck["finetune"], cfg, ())  # warns about changed settings
        model.backbone.load_state_dict(ck["backbone"])
        model.head.load_state_dict(ck["head"])
        optimizer.load_state_dict(ck["optimizer"])
        step, skipped = ck["step"], list(ck["skipped"])
        print0(f"resumed from {ckpt_path} at step {step} (epoch {step // steps_per_epoch})")
    # find_unused_parameters for LSS: its CLS feature leaves the ViT's joint-space projection (proj) without a
    # gradient, and DDP would wait for it forever otherwise. R3D uses every parameter.
    ddp_model = nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=method != "cvrl") if world > 1 else model

    a = src_cfg.get("clip_arch") or {}
    arch = src_cfg.get("arch") or (f"vit-w{a['vision_width']}-l{a['vision_layers']}" if a else None)
    what = (f"FROM SCRATCH (--random-init): {method} network, fresh weights (seed {cfg.seed})" if cfg.random_init
            else f"{method} backbone from {cfg.ckpt} (step {src.get('step')})")
    n_params = sum(p.numel() for p in model.parameters())
    print0(f"fine-tune | {what} | {splits['train'].name}: {len(splits['train'])} train / {len(splits['test'])} test "
           f"videos, {len(classes)} classes | {n_params / 1e6:.2f}M params | {world} process(es) on {device} | "
           f"global batch {global_batch} | {cfg.optimizer} lr {lr:.4g} | {steps_per_epoch} steps/epoch x "
           f"{cfg.epochs} epochs | out {out}")
    if master:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
        print0(json.dumps(asdict(cfg)))

    def checkpoint(step):
        mean.check_finite(step, "a lower --lr (ViTs: --optimizer adamw --lr 1e-4)")  # never save NaN weights
        every = gather_strings(skipped, world)  # a collective: every rank calls checkpoint() at the same step
        if master:
            training.save_checkpoint(ckpt_path, {
                # "method" + "config" + "backbone" in build_backbone's layout: eval_linear.py reads this checkpoint
                "method": method, "config": src_cfg, "trained_by": "scripts/finetune.py", "finetune": asdict(cfg),
                "step": step, "epoch": step / steps_per_epoch, "backbone": model.backbone.state_dict(),
                "head": model.head.state_dict(), "optimizer": optimizer.state_dict(), "classes": list(classes),
                "skipped": every, "init_backbone_sha1": init_sha1,
                "source": {"ckpt": str(cfg.ckpt), "step": src.get("step"), "random_init": cfg.random_init},
                "versions": {"torch": str(torch.__version__)}})
        if world > 1:
            dist.barrier()

    # ------------------------------------------------------------------------- training
    run = training.Run(rank, world, device, out)  # the log and the console of this run (training.py's loop pieces)
    steps = training.Steps(loader, step, total_steps, steps_per_epoch, cfg.max_steps, cfg.batch_size)
    mean = training.Mean(step)
    last = {}
    t_train = time.perf_counter()
    model.train()  # BatchNorm on batch statistics (and updating its running ones), dropout on
    bar = tqdm(total=total_steps, initial=step, disable=not master, unit="step", dynamic_ncols=True)
    with bar, training.interruptible(run, lambda: checkpoint(steps.step)):
        for step, batch in steps:
            training.report_bad(batch, skipped, run, "skipped unreadable training video (replaced by another)")
            video = batch["video"].to(device, non_blocking=True)[:, 0]  # (B, T, H, W, 3) uint8: one clip per video
            label = batch["label"].to(device)
            # Every random draw of the step is a function of (seed, step, rank), so a resumed run repeats it:
            # the augmentation from its own generator, dropout from the global one, re-seeded here.
            step_seed = training.step_seed(cfg.seed, step, rank)
            torch.manual_seed(step_seed)
            x = data.augment(data.to_bcthw(video), cfg.size, TRAIN_AUG,
                             torch.Generator().manual_seed(step_seed))  # (B, C, T, S, S) in [0, 1]
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last_3d)
            for group in optimizer.param_groups:
                group["lr"] = training.warmup_cosine(step, total_steps, warmup_steps, lr)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = ddp_model(x)  # (B, classes)
            loss = F.cross_entropy(logits.float(), label)
            loss_avg = loss.detach().clone()  # every rank sees the same value, so all stop at the same step
            if world > 1:
                dist.all_reduce(loss_avg, op=dist.ReduceOp.AVG)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mean.add(dict(loss=loss_avg, acc=(logits.argmax(1) == label).float().mean()))
            bar.update(1)
            if steps.log_due(cfg.log_every):
                mean.check_finite(step + 1, "a lower --lr (ViTs: --optimizer adamw --lr 1e-4)")
                n = mean.n
                last = dict(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 3), **mean.read(),
                            lr=optimizer.param_groups[0]["lr"], **steps.timing(global_batch, n))
                bar.set_postfix(loss=f"{last['loss']:.3f}", acc=f"{last['acc']:.2f}", lr=f"{last['lr']:.3g}",
                                clips_s=f"{last['clips_per_s']:.0f}", wait=f"{last['data_wait']:.0%}")
                run.log(last)
            if steps.epoch_end:
                checkpoint(step + 1)
    step = steps.step
    if run.log_file is not None:
        run.log_file.close()
    seconds_train = time.perf_counter() - t_train
    skipped = gather_strings(skipped, world)
    if world > 1:
        # The test runs on rank 0 alone; the others leave now rather than wait at a barrier (NCCL's timeout is 10 min,
        # and 30 views of a UCF101 test set take longer than that).
        dist.destroy_process_group()
        if not master:
            return None

    # ------------------------------------------------------------------------- test: K clips x crops, softmax averaged
    if not last:  # nothing trained in this invocation (a finished run re-tested): the last logged step
        last = next((json.loads(ln) for ln in reversed((out / "log.jsonl").read_text().splitlines())), {}) \
            if (out / "log.jsonl").exists() else {}
    t_test = time.perf_counter()
    model.eval()  # BN on its running statistics, dropout off
    feats = E.extract_features(model.backbone, splits["test"], "test", cfg, device, dtype=torch.float32)
    with torch.no_grad():
        head = model.head.float().cpu()
        probs = torch.cat([E.average_views(head(f)) for f in feats["features"].split(1024)])  # (N, classes)
    labels = feats["labels"]
    correct1, correct5 = E.topk_correct(probs, labels, 1), E.topk_correct(probs, labels, 5)
    per_class = {}
    for c, name in enumerate(classes):
        m = labels == c
        per_class[name] = round(100.0 * correct1[m].float().mean().item(), 2) if m.any() else None
    missing = [{"split": s, "path": p, "reason": "listed in the split file but not on disk"}
               for s, v in splits.items() for p in v.missing]
    train_skipped = [split_message(m, "train") for m in skipped]
    result = {
        "top1": round(100.0 * correct1.float().mean().item(), 2),
        "top5": round(100.0 * correct5.float().mean().item(), 2),
        # training videos used: all but the unreadable ones (each was replaced by another video when it came up)
        "num_train": len(splits["train"]) - len({s["path"] for s in train_skipped}),
        "num_test": len(labels), "num_classes": len(classes),
        "skipped": missing + train_skipped + feats["skipped"], "per_class": per_class,
        "random_init": cfg.random_init, "ckpt": str(cfg.ckpt), "method": method, "arch": arch,
        "source_step": int(src["step"]) if src.get("step") is not None else None, "init_backbone_sha1": init_sha1,
        "steps": step, "total_steps": total_steps, "complete": step >= total_steps,
        "final_train_loss": last.get("loss"), "final_train_acc": last.get("acc"),
        "recipe": {"epochs": cfg.epochs, "global_batch": global_batch, "optimizer": cfg.optimizer,
                   "nesterov": cfg.optimizer == "sgd", "lr": lr, "lr_flag": cfg.lr,
                   "lr_reference_batch": REFERENCE_BATCH,
                   "warmup_epochs": cfg.warmup_epochs, "weight_decay": cfg.weight_decay, "momentum": cfg.momentum,
                   "dropout": cfg.dropout, "train_crop_area": list(TRAIN_AUG.area),
                   "train_crop_aspect": list(TRAIN_AUG.aspect), "flip_p": TRAIN_AUG.flip_p,
                   "precision": "bf16 autocast" if device.type == "cuda" else "fp32"},
        "views": {"frames": cfg.frames, "stride": cfg.stride, "size": cfg.size, "test_size": cfg.test_size,
                  "canvas": list(cfg.canvas), "test_clips": cfg.test_clips, "crops": cfg.crops,
                  "test_views": cfg.test_clips * cfg.crops, "test_average": "softmax probabilities"},
        "dataset": {"dataset": cfg.dataset, "data": cfg.data, "annotations": cfg.annotations, "fold": cfg.fold,
                    "data_fraction": cfg.data_fraction,
                    "synthetic": asdict(cfg.synthetic) if cfg.dataset == "synthetic" else None},
        "world_size": world,
        "seconds": {"train": round(seconds_train, 1), "test": round(time.perf_counter() - t_test, 1),
                    "total": round(time.perf_counter() - t0, 1)},
    }
    print_report(result, cfg)
    Path(cfg.json).parent.mkdir(parents=True, exist_ok=True)
    Path(cfg.json).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {cfg.json}")
    return result


def print_report(r: dict, cfg: Config):
    v = r["views"]
    print(f"\n{'FROM SCRATCH (--random-init)' if r['random_init'] else 'fine-tuned'}: {r['method']} {r['arch']} | "
          f"{r['dataset']['dataset']} | {r['steps']}/{r['total_steps']} steps | test {v['test_clips']} clips x "
          f"{v['crops']} crops ({v['test_size']}px), softmax averaged")
    print(f"{'':24s}{'top-1':>8s}")
    for name, acc in r["per_class"].items():
        print(f"  {name[:22]:22s}{'-' if acc is None else f'{acc:.1f}':>8s}")
    print(f"top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  | train videos {r['num_train']} | test videos "
          f"{r['num_test']} | {r['seconds']['total']:.0f} s")
    for s in r["skipped"]:
        print(f"  SKIPPED {s['split']:5s} {s['path']}: {s['reason']}")


if __name__ == "__main__":
    try:
        training.command(main)
    except KeyboardInterrupt:  # outside the training loop (which saves first): before it, or during the test
        print("\ninterrupted; run the same command to go on (a finished training is not repeated, only the test)",
              file=sys.stderr)
        sys.exit(130)
