"""
Does the synthetic world give LSS something to fix? The frozen CLIP's readings of the training videos, measured
before any LSS run.

LSS adapts an image CLIP to video by self-distillation: the teacher's distribution over the action concepts is the
target the student learns from. That can only help when (1) the CLIP reads a frame the same way wherever it lies in
the video (a steady reading), (2) it reads videos worse than the stills it learned from, but above chance, (3) its
confidence tracks correctness (self-training amplifies what confidence tracks), and (4) the videos carry motion a
temporal model can read and a frame-averaging one cannot. This script measures each, on the TRAINING videos only
(settings are chosen on them, never on the test split):

  stills       motion zero-shot on 1000 fresh captioned stills (the CLIP's own domain)
  per-frame    zero-shot of every single frame, by its position in the video: early / middle / late thirds
  video        zero-shot of a global view (8 frames, frame-averaged features, as lss.py's teacher at step 0)
  calibration  accuracy of the more and the less confident half of the videos (confidence: the teacher's top
               probability at its temperature), and the AUROC of confidence for correctness (0.5: no information)
  probe        a linear classifier on frozen per-frame features of the global view's 8 frames, concatenated (order
               kept: motion is readable) or averaged (order lost), trained on half of the training videos and
               tested on the other half

    python scripts/lss_world.py                                   # lss.py's default world and tiny CLIP
    python scripts/lss_world.py --clutter 0 --noise 0 --out results/lss-world/clean
    python scripts/lss_world.py --clip ViT-tiny.pt --data DIR     # any CLIP, any synthetic folder

Writes OUT/world.json and OUT/world.png (per-frame zero-shot over time, accuracy by confidence).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
from data import SyntheticWorld  # noqa: E402
import training  # noqa: E402
import lss  # noqa: E402
import pretrain_clip  # noqa: E402  (scripts/pretrain_clip.py, beside this file)


@dataclass
class Config:
    clip: str | None = None         # CLIP weights; default: lss.py's tiny CLIP (pretrained once and cached)
    data: str | None = None         # a synthetic dataset folder; default: the one lss.py would use with these knobs
    synthetic: SyntheticWorld = field(default_factory=lambda: lss.Config().synthetic)  # the world (lss.py's)
    frames: int = lss.Config.frames  # the global view: frames and stride (lss.py's)
    stride: int = lss.Config.stride
    canvas: int = 32                # decode side (lss.py's --canvas)
    stills: int = 1000              # fresh stills for the stills' zero-shot
    seed: int = 0                   # the probe's split of the training videos
    out: str = "results/lss-world"  # world.json and world.png go here


def frame_features(vit: lss.VideoViT, frames: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) frames -> ('proj' (N, E), 'cls' (N, W)): the image CLIP's features of each frame alone."""
    proj, cls = [], []
    for i in range(0, len(frames), batch):
        x = rearrange(frames[i:i + batch], "n h w c -> n 1 c h w").float() / 255  # (n, T=1, 3, H, W)
        x = data.normalize(x, lss.CLIP_MEAN, lss.CLIP_STD, channel_dim=2)
        proj.append(vit.features(x, "proj"))
        cls.append(vit.features(x, "cls"))
    return torch.cat(proj), torch.cat(cls)


def auroc(score: np.ndarray, positive: np.ndarray) -> float:
    """Probability that a random correct video has higher confidence than a random wrong one (ties count half)."""
    pos, neg = score[positive], score[~positive]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


@torch.enable_grad()
def linear_probe(x_tr, y_tr, x_te, y_te, classes: int, steps: int = 300) -> float:
    """Multinomial logistic regression (standardised features, small weight decay, full-batch Adam): test top-1 %."""
    mu, sd = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mu) / sd, (x_te - mu) / sd
    torch.manual_seed(0)
    clf = torch.nn.Linear(x_tr.shape[1], classes)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(clf(x_tr), y_tr).backward()
        opt.step()
    return float((clf(x_te).argmax(1) == y_te).float().mean() * 100)


@torch.no_grad()
def stills_zero_shot(clip: lss.CLIP, vit: lss.VideoViT, vectors: torch.Tensor, n: int) -> float:
    images, attrs, _ = pretrain_clip.make_stills(n, size=clip.cfg.image_resolution, seed=12345, progress=False)
    proj, _ = frame_features(vit, torch.from_numpy(images))
    truth = torch.tensor([data.SYNTHETIC_CLASSES.index(a["motion"]) for a in attrs])
    return float(((F.normalize(proj, dim=-1) @ vectors.T).argmax(1) == truth).float().mean() * 100)


@torch.no_grad()
def diagnose(cfg: Config) -> dict:
    t0 = time.perf_counter()
    clip_path = cfg.clip or lss.tiny_clip(print)
    clip = lss.load_clip(clip_path)
    vit = lss.VideoViT.from_clip(clip.visual).eval()  # the temporal branch is a no-op: the image CLIP per frame
    tau_t = lss.TEACHER_STUDENT_TAU_RATIO / clip.logit_scale.exp().item()  # lss.py's teacher temperature
    text = lss.text_tower(clip)
    vectors = lss.class_vectors(text, data.SYNTHETIC_CLASSES, "names", lss.SYNTHETIC_TEMPLATES)  # (K, E)
    K = len(data.SYNTHETIC_CLASSES)
    videos = data.load_split("synthetic", cfg.data, split="train", world=cfg.synthetic)
    labels = torch.tensor(videos.labels)
    # every frame of every training video, decoded as lss.py decodes them
    frames = [data.read_frames(p, range(data.probe(p).num_frames), size=(cfg.canvas, cfg.canvas))
              for p in tqdm(videos.paths, desc="decode", unit="video")]
    T = min(len(f) for f in frames)
    frames = torch.stack([f[:T] for f in frames])  # (N, T, H, W, 3)
    proj, cls = frame_features(vit, frames.flatten(0, 1))
    proj = F.normalize(proj, dim=-1).view(len(videos), T, -1)  # (N, T, E)
    cls = cls.view(len(videos), T, -1)  # (N, T, W)
    # per-frame zero-shot by position
    per_frame = ((proj @ vectors.T).argmax(-1) == labels[:, None]).float().mean(0) * 100  # (T,)
    thirds = [float(x.mean()) for x in per_frame.tensor_split(3)]
    # the global view: `frames` frames `stride` apart, centred in the video; its feature is the frame average
    span = (cfg.frames - 1) * cfg.stride + 1
    idx = torch.arange(cfg.frames) * cfg.stride + max(0, (T - span) // 2)
    idx = idx.clamp(max=T - 1)
    view = F.normalize(proj[:, idx].mean(1), dim=-1)  # (N, E)
    sims = view @ vectors.T  # (N, K)
    P = F.softmax(sims / tau_t, dim=-1)
    conf, pred = P.max(-1)
    right = (pred == labels).numpy()
    order = np.argsort(-conf.numpy())
    half = len(order) // 2
    per_class = {c: float(right[labels.numpy() == k].mean() * 100) for k, c in enumerate(data.SYNTHETIC_CLASSES)}
    predicted = {c: float((pred == k).float().mean() * 100) for k, c in enumerate(data.SYNTHETIC_CLASSES)}
    quartiles = [float(right[q].mean() * 100) for q in np.array_split(order, 4)]
    # the probe: half of the training videos (per class) train it, the other half test it
    g = np.random.default_rng(cfg.seed)
    train = np.zeros(len(videos), bool)
    for k in range(K):
        members = np.flatnonzero(labels.numpy() == k)
        train[g.permutation(members)[:len(members) // 2]] = True
    tr, te = torch.from_numpy(train), torch.from_numpy(~train)
    concat, average = cls[:, idx].flatten(1), cls[:, idx].mean(1)  # (N, frames*W), (N, W)
    res = {
        "clip": str(clip_path), "config": asdict(cfg), "videos": len(videos), "frames_per_video": T,
        "chance": 100 / K, "tau_t": tau_t,
        "stills_zero_shot": stills_zero_shot(clip, vit, vectors, cfg.stills),
        "per_frame_zero_shot": [round(float(x), 2) for x in per_frame],
        "per_frame_thirds": {"early": thirds[0], "middle": thirds[1], "late": thirds[2]},
        "video_zero_shot": float(right.mean() * 100),
        "video_zero_shot_per_class": per_class, "predicted_share": predicted,
        "calibration": {"confident_half": float(right[order[:half]].mean() * 100),
                        "other_half": float(right[order[half:]].mean() * 100),
                        "quartiles_most_to_least_confident": quartiles,
                        "auroc": auroc(conf.numpy(), right), "mean_confidence": float(conf.mean())},
        "probe": {"frame_concat": linear_probe(concat[tr], labels[tr], concat[te], labels[te], K),
                  "frame_average": linear_probe(average[tr], labels[tr], average[te], labels[te], K)},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return res


def report(r: dict):
    c, p = r["calibration"], r["probe"]
    print(f"stills zero-shot {r['stills_zero_shot']:.1f}% | training videos ({r['videos']}): per-frame zero-shot "
          f"early/middle/late {r['per_frame_thirds']['early']:.1f} / {r['per_frame_thirds']['middle']:.1f} / "
          f"{r['per_frame_thirds']['late']:.1f}%, global view {r['video_zero_shot']:.1f}% (chance {r['chance']:.1f}%)")
    print(f"calibration: confident half {c['confident_half']:.1f}% vs other half {c['other_half']:.1f}% right, "
          f"quartiles {' / '.join(f'{q:.0f}' for q in c['quartiles_most_to_least_confident'])}, "
          f"AUROC {c['auroc']:.2f}")
    print(f"frozen probe (half the training videos -> the other half): frames concatenated {p['frame_concat']:.1f}% "
          f"vs averaged {p['frame_average']:.1f}%")
    print("per class: " + ", ".join(f"{k} {v:.0f}" for k, v in r["video_zero_shot_per_class"].items()))
    print("predicted: " + ", ".join(f"{k} {v:.0f}" for k, v in r["predicted_share"].items()))


def picture(r: dict, path: Path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: no picture (pip install matplotlib)")
        return
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot(r["per_frame_zero_shot"], label="single frame")
    ax[0].axhline(r["video_zero_shot"], color="C1", ls="--", label="global view (8 frames)")
    ax[0].axhline(r["stills_zero_shot"], color="C2", ls=":", label="stills")
    ax[0].axhline(r["chance"], color="grey", lw=0.8, label="chance")
    ax[0].set(xlabel="frame of the video", ylabel="zero-shot top-1 %", title="the frozen CLIP over time", ylim=(0, 104))
    ax[0].legend(fontsize=7, loc="upper right", bbox_to_anchor=(1.0, 0.92))  # below the stills line
    q = r["calibration"]["quartiles_most_to_least_confident"]
    ax[1].bar(range(4), q, color="C0")
    ax[1].axhline(r["chance"], color="grey", lw=0.8)
    ax[1].set(xticks=range(4), xticklabels=["most", "2nd", "3rd", "least"], xlabel="confidence quartile",
              ylabel="zero-shot top-1 %", title=f"calibration (AUROC {r['calibration']['auroc']:.2f})", ylim=(0, 104))
    fig.tight_layout()
    fig.savefig(path, dpi=100, metadata={"Software": None})
    plt.close(fig)


def main(argv=None):
    cfg = training.parse_config(Config, argv, __doc__.strip().split("\n\n")[0])
    r = diagnose(cfg)
    report(r)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "world.json").write_text(json.dumps(r, indent=1) + "\n")
    picture(r, out / "world.png")
    print(f"wrote {out / 'world.json'} and {out / 'world.png'}")


if __name__ == "__main__":
    training.command(main)
