"""
A pre-trained start for LSS where no pre-trained CLIP exists: the image tower that `lss.py --init random` would
build, trained on the dataset's videos with CVRL's InfoNCE, then handed to `lss.py --init clip` as its CLIP.

Why. From random weights LSS's teacher stays uniform over the concept space: every video's feature is
nearly the same vector, centring removes it, and nothing is left to sharpen. The paper starts from OpenAI's CLIP,
whose image tower already separates videos. No such weights can be fetched offline, so this script makes a small
stand-in on the same data: a self-supervised image tower, so that LSS starts, as in the paper, from an image tower
whose features differ from video to video (lss.py adds the temporal attention, a no-op at step 0).

What is trained. CVRL's recipe (cvrl.py) with lss.py's network in place of the 3D ResNet:
  - two clips of each video, their starts drawn by CVRL's interval sampler (cvrl.PairSampler: decreasing P(t));
  - CVRL's temporally consistent spatial augmentation, view 1 and view 2 as in cvrl.augment_configs;
  - encoder = lss.py's CLIP image tower run on every frame, its output (the projected CLS token, CLIP's image
    embedding) averaged over the clip's frames: exactly the feature `lss.py --init clip` starts from at step 0
    (cls_mode per_frame, temporal branch zero);
  - CVRL's MLP head, discarded afterwards (--head none: no head, NT-Xent on the joint-space feature itself, the
    one LSS's concept logits are cosines of); NT-Xent (cvrl.nt_xent):
        L = -log exp(sim(z_i, z_j)/tau) / sum_{k != i} exp(sim(z_i, z_k)/tau)   over both clips of every video;
  - AdamW with linear warmup and cosine decay (lss.py's schedule): a ViT, where CVRL's SGD does not apply.
The text tower is NOT trained: it keeps its random (seeded) initialisation, as in `lss.py --init random`, so the
concept vectors stay random directions. Only the image side is pre-trained: the question is whether a
structured image feature alone keeps the teacher from a uniform output. (An image-text pre-training that aligns the
towers is not possible on the synthetic data without leaking its labels: a single frame carries no class, which is
the class's motion, so captions that name the class would be labels.)

Outputs in --out:
  clip.pt        an OpenAI-layout CLIP state dict (trained image tower + random text tower): `lss.py --init clip
                 --clip OUT/clip.pt` loads it as it would OpenAI's ViT-B-16.pt
  checkpoint.pt  lss.py's checkpoint layout ("method": "lss", "backbone" = the VideoViT that lss.py builds from
                 clip.pt at step 0), so `eval_linear.py --ckpt OUT/checkpoint.pt` probes the start itself; it also
                 holds the optimizer and head, so re-running the same command resumes
  config.json, log.jsonl (step, epoch, loss, lr, clips_per_s)

    python scripts/lss_start.py --out runs/lss_start                      # CPU: synthetic videos, ~8 min
    python eval_linear.py --ckpt runs/lss_start/checkpoint.pt             # the start, frozen
    python lss.py --init clip --clip runs/lss_start/clip.pt --tau-s 0.1 --tau-t 0.04 --out runs/lss_from_start
    python scripts/lss_start.py --epochs 1 --max-steps 2 --workers 0 --out runs/lss_start_smoke    # seconds

The view flags (--frames, --stride, --canvas, --size) and the network flags default to lss.py's, so the checkpoint
matches what lss.py trains and probes; lss.py needs no network flags, since --init clip reads the architecture off
clip.pt. Temperatures: pass lss.py the random-init values (--tau-s 0.1 --tau-t 0.04); its
--init clip defaults (0.01 / 0.004) are set for OpenAI CLIP's narrow band of image-text cosines, which a random
text tower does not have.
"""
import json
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import torch
from einops import rearrange

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cvrl  # noqa: E402
import data  # noqa: E402
from data import SyntheticWorld  # noqa: E402
import training  # noqa: E402
import lss  # noqa: E402

L, C = lss.Config, cvrl.Config  # view and network defaults are lss.py's, the clip pairs' are CVRL's


@dataclass
class Config:
    # data (as lss.py)
    dataset: str = L.dataset        # auto (from --data) | synthetic | folder | unlabeled | ucf101 | hmdb51 | kinetics
    data: str | None = L.data       # dataset root (videos); synthetic: generated once into the cache if not given
    annotations: str | None = L.annotations  # UCF101 ucfTrainTestlist/ dir, HMDB51 split dir, or Kinetics CSV
    fold: int = L.fold              # UCF101/HMDB51 split number (1-3)
    synthetic: SyntheticWorld = field(default_factory=SyntheticWorld)  # no trail: the random-init study's videos
    canvas: tuple = L.canvas        # decode size (H, W)
    # clips: lss.py's global view, two per video at a CVRL interval
    frames: int = L.frames          # frames per clip
    stride: int = L.stride          # frames between sampled frames
    interval: str = C.interval      # distribution of the interval between the two clips (cvrl.py's flag)
    power: float = C.power          # decreasing family's power (cvrl.py's flag)
    size: int = L.size              # crop side fed to the network, a multiple of --patch
    crop_area: tuple = C.crop_area  # random resized crop area range (CVRL's)
    # network: lss.py --init random's CLIP
    width: int = L.width            # ViT width; heads = width // 64 (at least 1)
    layers: int = L.layers          # ViT blocks
    patch: int = L.patch            # patch side in pixels
    embed_dim: int = L.embed_dim    # joint image-text space: the encoder's output, averaged over frames
    text_width: int = L.text_width  # text transformer width (random, not trained)
    text_layers: int = L.text_layers  # text transformer blocks (random, not trained)
    head: str = "mlp"               # mlp: CVRL's MLP head, discarded after; none: InfoNCE on the joint-space feature
    head_hidden: int = C.head_hidden  # MLP head hidden width (discarded after training)
    head_layers: int = C.head_layers  # MLP head hidden layers
    head_out: int = C.head_out      # embedding size of the InfoNCE
    temperature: float = C.temperature  # InfoNCE temperature (cvrl.py's synthetic default)
    # optimisation
    epochs: int = 20                # passes over the training videos
    batch_size: int = 32            # videos per step (2 clips each)
    lr: float = 5e-4                # AdamW peak learning rate at this batch size (not rescaled); see the note below
    warmup_epochs: float = 1.0      # linear warmup, then cosine to --min-lr
    min_lr: float = 1e-6            # lr at the last step
    weight_decay: float = 0.05      # on matrices and embeddings only (lss.param_groups)
    # machinery
    device: str = "auto"            # auto | cpu | cuda (bf16 autocast on cuda)
    workers: int = 2                # DataLoader decode processes
    seed: int = 0                   # weights (both towers), data order, augmentations
    out: str = "runs/lss_start"     # output dir: clip.pt, checkpoint.pt, config.json, log.jsonl
    log_every: int = 10             # steps between log lines
    max_steps: int = 0              # stop after this many steps in total (0 = no limit)


# --lr 5e-4: higher rates kept InfoNCE at its chance value longer with this tiny ViT (the look that chose it:
# docs/results.md, "The InfoNCE start").

def lss_config(cfg: Config, arch: lss.CLIPConfig) -> dict:
    """The config eval_linear.py (and lss.build_backbone) read off checkpoint.pt: lss.py's, with our views and
    network, so the probe decodes the same clips an lss.py checkpoint would."""
    shared = {f.name: getattr(cfg, f.name) for f in fields(L) if hasattr(cfg, f.name) and f.name not in ("epochs",
              "batch_size", "lr", "min_lr", "warmup_epochs", "weight_decay", "out", "log_every", "max_steps")}
    templates = lss.DATASET_TEMPLATES[cfg.dataset]  # what lss.py's --templates auto resolves to
    return {**asdict(replace(L(), **shared, init="random", templates=templates)), "clip_arch": asdict(arch),
            "trained_by": "scripts/lss_start.py", "start_config": asdict(cfg)}


def clip_features(visual: lss.VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """float clips (B, C, T, H, W) in [0, 1] -> (B, embed_dim): CLIP's image embedding of every frame, averaged over
    the frames. With the temporal branch a no-op, this is what lss.py's VideoViT computes at step 0."""
    B = x.shape[0]
    frames = rearrange(lss.to_vit(x), "b t c h w -> (b t) c h w")  # (B*T, C, H, W), CLIP-normalised
    return rearrange(visual(frames), "(b t) d -> b t d", b=B).mean(dim=1)  # (B, embed_dim)


def train(cfg: Config):
    if cfg.size % cfg.patch:
        raise SystemExit(f"error: --size {cfg.size} is not a multiple of --patch {cfg.patch}")
    run, ckpt = training.start(cfg, "lss")  # one process: a start for lss.py, not a method
    device = run.device
    torch.manual_seed(cfg.seed)
    ckpt_path, clip_path = run.checkpoint_path, run.out / "clip.pt"
    videos = data.load_split(cfg.dataset, cfg.data, cfg.annotations, cfg.fold, "train",
                             cfg.synthetic)
    dataset = data.VideoDataset(videos, cvrl.PairSampler(cfg.frames, cfg.stride, cfg.interval, cfg.power),
                                canvas=cfg.canvas, resample=True, min_frames=cfg.frames)
    loader = data.make_loader(dataset, cfg.batch_size, cfg.workers, shuffle=True, drop_last=True, seed=cfg.seed)
    steps_per_epoch = len(loader)
    total_steps, warmup_steps = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    aug1, aug2 = cvrl.augment_configs(replace(C(), crop_area=cfg.crop_area))

    # the CLIP lss.py --init random builds from these flags; only its image tower (and the head) are trained
    arch = lss.clip_config_from_flags(replace(L(), size=cfg.size, **{k: getattr(cfg, k) for k in (
        "width", "layers", "patch", "embed_dim", "text_width", "text_layers")}))
    clip = lss.CLIP(arch)
    visual = clip.visual.to(device)
    # --head none: no head, so the videos must be told apart in the joint space itself, by the very feature whose
    # cosines to the concepts make LSS's logits. With CVRL's MLP head they need not be: the BatchNorm after its first
    # linear layer subtracts the batch mean, so the tower may keep one large direction common to every video.
    if cfg.head not in ("mlp", "none"):
        raise SystemExit(f"error: --head {cfg.head!r}: use mlp or none")
    head = (cvrl.ProjectionHead(arch.embed_dim, cfg.head_hidden, cfg.head_out, cfg.head_layers) if cfg.head == "mlp"
            else torch.nn.Identity()).to(device)
    model = torch.nn.ModuleDict(dict(visual=visual, head=head))
    optimizer = torch.optim.AdamW(lss.param_groups(model), lr=0.0, weight_decay=cfg.weight_decay)
    start_step = 0
    if ckpt is not None:
        if ckpt.get("trained_by") != "scripts/lss_start.py":
            raise SystemExit(f"error: {ckpt_path} was not written by scripts/lss_start.py; use another --out")
        training.check_resume_config(ckpt["config"]["start_config"], cfg, (
            "width", "layers", "patch", "embed_dim", "text_width", "text_layers", "head", "head_hidden", "head_layers",
            "head_out", "seed"))
        clip.load_state_dict(ckpt["clip"])  # both towers: the text tower's random draw is kept too
        head.load_state_dict(ckpt["head"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_step = ckpt["step"]
        run.print(f"resumed from {ckpt_path} at step {start_step}")
    n_params = sum(p.numel() for p in visual.parameters())
    run.print(f"LSS start (InfoNCE) | {videos.name}: {len(videos)} videos | image tower {arch.vision_width}w x "
              f"{arch.vision_layers} ({n_params / 1e6:.2f}M params), {cfg.frames} frames of {cfg.size} px | {device} | "
              f"{steps_per_epoch} steps/epoch x {cfg.epochs} epochs")
    config = lss_config(cfg, arch)
    training.write_config(run, config)

    def checkpoint(step):
        mean.check_finite(step, "a lower --lr")
        clip_sd = {k: v.detach().cpu() for k, v in clip.state_dict().items()}
        training.save_checkpoint(clip_path, clip_sd)  # what lss.py --init clip --clip loads
        # the VideoViT lss.py builds from clip.pt (temporal branch a no-op): what eval_linear.py probes
        vit = lss.VideoViT.from_clip(clip.visual, config["cls_mode"], cfg.frames)
        training.save_checkpoint(ckpt_path, {
            "method": "lss", "trained_by": "scripts/lss_start.py", "config": config, "step": step,
            "epoch": step / steps_per_epoch, "backbone": {"vit." + k: v.cpu() for k, v in vit.state_dict().items()},
            "clip": clip_sd, "head": head.state_dict(), "optimizer": optimizer.state_dict(),
            "versions": {"torch": str(torch.__version__)}})

    steps = training.Steps(loader, start_step, total_steps, steps_per_epoch, cfg.max_steps, cfg.batch_size)
    mean, skipped = training.Mean(start_step), []
    model.train()
    with training.interruptible(run, lambda: checkpoint(steps.step)):
        for step, batch in steps:
            training.report_bad(batch, skipped, run)
            video = batch["video"].to(device, non_blocking=True)  # (B, 2, T, H, W, 3) uint8: two clips per video
            g = torch.Generator().manual_seed(training.step_seed(cfg.seed, step))  # a function of the step
            x1 = data.augment(data.to_bcthw(video[:, 0]), cfg.size, aug1, g)  # (B, C, T, S, S) in [0, 1]
            x2 = data.augment(data.to_bcthw(video[:, 1]), cfg.size, aug2, g)
            lr = training.warmup_cosine(step, total_steps, warmup_steps, cfg.lr, cfg.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                # one pass over both clips: the head's BatchNorm sees the batch of 2B clips, as in cvrl.py
                z = head(clip_features(visual, torch.cat([x1, x2])))  # (2B, head_out)
            loss = cvrl.nt_xent(*z.float().chunk(2), cfg.temperature)  # (B, head_out) per clip -> scalar
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            mean.add(dict(loss=loss.detach()))
            if steps.log_due(cfg.log_every):
                mean.check_finite(step + 1, "a lower --lr")
                n = mean.n
                rec = dict(step=step + 1, epoch=round((step + 1) / steps_per_epoch, 3), **mean.read(), lr=lr,
                           **steps.timing(2 * cfg.batch_size, n))
                run.print(json.dumps(rec))
                run.log(rec)
            if steps.epoch_end:
                checkpoint(step + 1)
    if not clip_path.exists():  # --epochs 0: nothing trained, but the start (random weights) is still written
        checkpoint(0)
    training.finish(run, skipped, steps.step, f"start {clip_path}\nprobe the start: python eval_linear.py --ckpt "
                    f"{ckpt_path}\nLSS from it:     python lss.py --init clip --clip {clip_path} --tau-s 0.1 --tau-t 0.04")


if __name__ == "__main__":
    training.command(lambda: train(data.decide_dataset(training.parse_config(Config, None, __doc__.strip().split(
        "\n\n")[0]))))
