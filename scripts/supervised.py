"""
Supervised upper bound for the replication study: CVRL's encoder trained with the labels, then evaluated by the
same linear probe as the self-supervised runs.

The network is exactly the one a CVRL run with the same flags would train (cvrl.build_encoder(--arch)), fed the
same clips (--frames/--stride/--canvas/--size); a linear classifier on its pooled feature is trained with softmax
cross-entropy on the labelled training split, each video seen as one random clip (data.RandomClip) with the
linear probe's augmentation (random resized crop + flip, eval_linear.train_augment_config), SGD momentum 0.9,
linear warmup then cosine. The checkpoint is written in cvrl.py's format ("method": "cvrl", the encoder under
"backbone" with the "encoder." prefix, the config with every view setting), so eval_linear.py reads it unchanged
and the probe measures the representation, not this classifier. One process (no torchrun): it is a reference
number, not a method.

    python scripts/supervised.py --out runs/supervised                   # CPU: tiny R3D, synthetic videos
    python eval_linear.py --ckpt runs/supervised/checkpoint.pt           # what the study reports
    python scripts/supervised.py --epochs 1 --max-steps 2 --out runs/sup_smoke --workers 0   # seconds

Re-running a command with the same --out resumes from OUT/checkpoint.pt (same schedule, also mid-epoch).
Outputs in --out: checkpoint.pt, config.json, log.jsonl (step, epoch, loss, acc, lr, clips_per_s).
"""
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cvrl  # noqa: E402
import data  # noqa: E402
from data import SyntheticWorld  # noqa: E402
import training  # noqa: E402
from eval_linear import train_augment_config  # noqa: E402

C = cvrl.Config  # data, clip and network defaults are CVRL's own, so "the same encoder" cannot drift


@dataclass
class Config:
    # data (as cvrl.py)
    dataset: str = C.dataset        # auto (from --data) | synthetic | folder | ucf101 | hmdb51 | kinetics
    data: str | None = C.data       # dataset root (videos); synthetic: generated once into the cache if not given
    annotations: str | None = C.annotations  # UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, or Kinetics CSV
    fold: int = C.fold              # UCF101/HMDB51 split number (1-3)
    synthetic: SyntheticWorld = field(default_factory=SyntheticWorld)  # the synthetic videos (cvrl.py's)
    canvas: tuple = C.canvas        # decode size (H, W)
    frames: int = C.frames          # frames per clip
    stride: int = C.stride          # frames between sampled frames
    size: int = C.size              # crop size fed to the network
    arch: str = C.arch              # encoder: tiny, r3d18, r3d50, r3d101 (cvrl.build_encoder)
    # optimisation
    epochs: int = 20                # passes over the labelled training videos
    batch_size: int = 32            # videos per step
    lr: float = 0.1                 # SGD peak learning rate at this batch size (not rescaled)
    warmup_epochs: float = 1.0      # linear warmup, then cosine to 0
    weight_decay: float = 1e-4      # on conv/linear weights only
    momentum: float = 0.9
    # machinery
    device: str = "auto"            # auto | cpu | cuda (bf16 autocast on cuda)
    workers: int = 2                # DataLoader decode processes
    seed: int = 0
    out: str = "runs/supervised"    # output dir: checkpoint.pt, config.json, log.jsonl
    log_every: int = 10             # steps between log lines
    max_steps: int = 0              # stop after this many steps in total (0 = no limit)


def train(cfg: Config):
    run, ckpt = training.start(cfg, "cvrl")  # cvrl.py's checkpoint layout: eval_linear.py probes it as it does CVRL's
    device = run.device
    torch.manual_seed(cfg.seed)
    videos, cfg, skipped = training.training_videos(cfg, run)
    dataset = data.VideoDataset(videos, data.RandomClip(cfg.frames, cfg.stride), canvas=cfg.canvas, resample=True,
                                min_frames=cfg.frames)
    loader = data.make_loader(dataset, cfg.batch_size, cfg.workers, shuffle=True, drop_last=True, seed=cfg.seed)
    steps_per_epoch = len(loader)
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    aug = train_augment_config()

    encoder = cvrl.build_encoder(cfg.arch)
    classifier = nn.Linear(encoder.feature_dim, len(videos.classes))
    model = nn.Sequential(encoder, classifier).to(device)
    optimizer = cvrl.configure_optimizer(model, cfg.lr, cfg.weight_decay, cfg.momentum, "sgd")
    start_step = 0
    if ckpt is not None:
        training.check_resume_config(ckpt["config"], cfg, ("arch",))
        encoder.load_state_dict({k.removeprefix("encoder."): v for k, v in ckpt["backbone"].items()})
        classifier.load_state_dict(ckpt["classifier"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_step, skipped = ckpt["step"], list(ckpt.get("skipped", [])) or skipped
        training.note_data_change(run, ckpt, len(videos), steps_per_epoch, total_steps)
        run.print(f"resumed from {run.checkpoint_path} at step {start_step}")
    run.print(f"supervised | {videos.name}: {len(videos)} videos, {len(videos.classes)} classes | encoder {cfg.arch} | "
              f"{device} | {steps_per_epoch} steps/epoch x {cfg.epochs} epochs")
    training.write_config(run, asdict(cfg))

    def checkpoint(step):
        mean.check_finite(step, "a lower --lr")
        # cvrl.py's layout: eval_linear.py builds cvrl.build_backbone(config) and loads "backbone" into it
        training.save_checkpoint(run.checkpoint_path, {
            "method": "cvrl", "trained_by": "scripts/supervised.py", "config": asdict(cfg), "step": step,
            "epoch": step / steps_per_epoch, "backbone": {"encoder." + k: v for k, v in encoder.state_dict().items()},
            "classifier": classifier.state_dict(), "optimizer": optimizer.state_dict(), "skipped": sorted(set(skipped)),
            "num_videos": len(videos), "steps_per_epoch": steps_per_epoch, "versions": {"torch": str(torch.__version__)}})

    steps = training.Steps(loader, start_step, total_steps, steps_per_epoch, cfg.max_steps, cfg.batch_size)
    mean = training.Mean(start_step)
    model.train()
    with training.interruptible(run, lambda: checkpoint(steps.step)):
        for step, batch in steps:
            training.report_bad(batch, skipped, run)
            video = batch["video"].to(device, non_blocking=True)[:, 0]  # (B, T, H, W, 3) uint8: one clip per video
            label = batch["label"].to(device)
            g = torch.Generator().manual_seed(training.step_seed(cfg.seed, step))  # a function of the step
            x = data.augment(data.to_bcthw(video), cfg.size, aug, g)            # (B, C, T, S, S) in [0, 1]
            for group in optimizer.param_groups:
                group["lr"] = training.warmup_cosine(step, total_steps, warmup_steps, cfg.lr)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits = model(x)                                               # (B, classes)
            loss = F.cross_entropy(logits.float(), label)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mean.add(dict(loss=loss.detach(), acc=(logits.argmax(1) == label).float().mean()))
            if steps.log_due(cfg.log_every):
                mean.check_finite(step + 1, "a lower --lr")
                n = mean.n
                rec = dict(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 3), **mean.read(),
                           lr=optimizer.param_groups[0]["lr"], **steps.timing(cfg.batch_size, n))
                run.print(json.dumps(rec))
                run.log(rec)
            if steps.epoch_end:
                checkpoint(step + 1)
    training.finish(run, skipped, steps.step, f"evaluate: python eval_linear.py --ckpt {run.checkpoint_path}")


if __name__ == "__main__":
    def main():
        cfg = data.decide_dataset(training.parse_config(Config, None, __doc__.strip().split("\n\n")[0]))
        data.require_labels(cfg.dataset, cfg.data, "supervised training")
        train(cfg)
    training.command(main)
