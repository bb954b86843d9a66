"""
neighbours.py -- what a self-supervised checkpoint finds similar: a picture for runs without labels.

A linear probe needs labels. A folder of your own videos has none, but the question "has the network learned
something?" still has a visual answer: take a few videos, find the videos whose frozen features are nearest to
theirs, and look. This script extracts features exactly as eval_linear.py does for test videos (its
build_frozen_backbone and extract_features: K uniformly spaced clips, a centre crop, no augmentation, the checkpoint's
frames/stride/size/canvas), averages each video's clips (L2-normalised), and writes a PNG: one row per query video,
its middle frame and then its k nearest neighbours by cosine similarity, each with the similarity and its file name
under it.

How to read it. Neighbours of a trained network share what its training made it attend to (the motion, the scene, the
camera's movement); with random weights they share mostly colour and layout. Compare with the same picture of
`--random-init`. If every similarity is near 1 (the printed mean cosine between two videos says how near), the
features barely tell videos apart: a collapsed or untrained network. On a labelled dataset the rows also say how many
neighbours share the query's class.

    python scripts/neighbours.py --ckpt runs/mine/checkpoint.pt --out runs/mine/neighbours.png   # its own videos
    python scripts/neighbours.py --ckpt runs/mine/checkpoint.pt --data ~/other_videos --queries 6 --k 8
    python scripts/neighbours.py --ckpt runs/mine/checkpoint.pt --random-init --out runs/mine/neighbours_random.png
"""
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data  # noqa: E402
import training  # noqa: E402
import eval_linear  # noqa: E402


@dataclass
class Config:
    ckpt: str = ""                  # checkpoint of cvrl.py or lss.py (required)
    random_init: bool = False       # the checkpoint's network with fresh random weights (the baseline picture)
    data: str | None = None         # folder of videos to search; default: the one the checkpoint was trained on
    dataset: str = "auto"           # auto (from --data) | synthetic | folder | unlabeled | ucf101 | hmdb51 | kinetics
    annotations: str | None = None  # UCF101/HMDB51 split dir or Kinetics CSV, with those --dataset values
    fold: int = 1                   # UCF101/HMDB51 split number
    queries: int = 4                # query videos, one row each, chosen at random (--seed)
    k: int = 5                      # nearest neighbours shown per query
    max_videos: int = 500           # search among at most this many videos (a random subset of a large folder)
    clips: int = 2                  # uniformly spaced clips per video, features averaged (eval_linear's --test-clips)
    tile: int = 96                  # side of each picture in pixels
    batch_size: int = 32            # clips per backbone forward pass
    workers: int = 2                # DataLoader decode processes
    device: str = "auto"            # auto | cpu | cuda
    seed: int = 0                   # which videos are queries (and the subset, and random-init weights)
    out: str = "neighbours.png"     # the PNG to write


def thumbnail(frame: np.ndarray, side: int) -> np.ndarray:
    """uint8 (H, W, 3) -> (side, side, 3): the whole frame, scaled to fit, on grey (portrait and landscape alike)."""
    from PIL import Image
    img = Image.fromarray(frame)
    s = side / max(img.size)
    img = img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))), Image.Resampling.BILINEAR)
    out = Image.new("RGB", (side, side), (128, 128, 128))
    out.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return np.asarray(out)


def middle_frame(path) -> np.ndarray:
    info = data.probe(path)
    return data.read_frames(path, [info.num_frames // 2])[0].numpy()  # (H, W, 3), upright, at full resolution


def main(argv=None) -> dict:
    cfg = training.parse_config(Config, argv, __doc__.strip().split("\n\n")[0])
    if not cfg.ckpt:
        raise SystemExit("error: --ckpt is required (a cvrl.py or lss.py checkpoint.pt)")
    if cfg.queries < 1 or cfg.k < 1:
        raise SystemExit("error: --queries and --k must be at least 1")
    t0 = time.perf_counter()
    ckpt = eval_linear.load_checkpoint(cfg.ckpt)
    module = eval_linear.import_method(ckpt["method"])
    # The views are eval_linear.py's test views at the checkpoint's settings; without --data, its own videos.
    ecfg = eval_linear.resolve_config(eval_linear.Config(
        ckpt=cfg.ckpt, dataset=None if cfg.data is None else cfg.dataset, data=cfg.data, annotations=cfg.annotations,
        fold=None if cfg.data is None else cfg.fold, test_clips=cfg.clips, crops=1, batch_size=cfg.batch_size,
        workers=cfg.workers, device=cfg.device, seed=cfg.seed), ckpt["config"])
    device = training.resolve_device(cfg.device)
    backbone = eval_linear.build_frozen_backbone(module, ckpt, cfg.random_init, cfg.seed).to(device)
    try:
        videos = data.load_split(ecfg.dataset, ecfg.data, ecfg.annotations, ecfg.fold, "train", ecfg.synthetic)
    except data.DatasetError as e:
        raise SystemExit(f"error: {e}")
    rng = np.random.default_rng(cfg.seed)
    if len(videos) > cfg.max_videos:  # a large folder: a random subset, in folder order
        keep = np.sort(rng.choice(len(videos), cfg.max_videos, replace=False))
        videos = data.VideoList([videos.paths[i] for i in keep], [videos.labels[i] for i in keep], videos.classes,
                                name=f"{videos.name} ({cfg.max_videos} of {len(videos)})")
    what = "RANDOM-INIT" if cfg.random_init else f"step {ckpt.get('step')}"
    print(f"neighbours | {ckpt['method']} {ckpt['config'].get('arch', '')} ({what}) | {videos.name}: {len(videos)} "
          f"videos | {cfg.clips} clips x {ecfg.frames} frames (stride {ecfg.stride}), centre crop {ecfg.size}px | "
          f"{device}")

    # (N, clips, D) features of the decodable videos; "test" selects the test views (no augmentation)
    feats = eval_linear.extract_features(backbone, videos, "test", ecfg, device)
    v = eval_linear.video_features(feats["features"])  # (N, D), unit rows
    index = feats["index"].tolist()                      # row -> position in `videos`
    if len(index) < 2:
        raise SystemExit(f"error: only {len(index)} decodable video(s): neighbours need at least 2")
    k = min(cfg.k, len(index) - 1)
    q = np.sort(rng.choice(len(index), min(cfg.queries, len(index)), replace=False))
    sim = v[q] @ v.T                                      # (Q, N) cosine similarities
    sim[torch.arange(len(q)), torch.as_tensor(q)] = -2.0  # a video is not its own neighbour
    top_sim, top = sim.topk(k, dim=1)                     # (Q, k), nearest first
    cosine = eval_linear.between_video_cosine(feats["features"])

    name = (lambda p: os.path.relpath(p, ecfg.data)) if ecfg.data else os.path.basename  # noqa: E731
    labelled = bool(videos.classes)
    rows, result = [], []
    for r, qi in enumerate(q):
        query = videos.paths[index[qi]]
        nbrs = [videos.paths[index[j]] for j in top[r].tolist()]
        text = f"query {r + 1}: {name(query)}"
        if labelled:
            cls = videos.labels[index[qi]]
            same = sum(videos.labels[index[j]] == cls for j in top[r].tolist())
            text += f" (class {videos.classes[cls]}: {same} of {k} neighbours share it)"
        images = [thumbnail(middle_frame(p), cfg.tile) for p in [query] + nbrs]
        captions = [f"query\n{name(query)}"] + [f"{s:.3f}\n{name(p)}" for p, s in zip(nbrs, top_sim[r].tolist())]
        rows.append((text, images, captions))
        result.append({"query": query, "neighbours": [{"path": p, "cosine": round(s, 4)}
                                                      for p, s in zip(nbrs, top_sim[r].tolist())]})
        print(f"{name(query)}\n" + "".join(f"  {s:.3f}  {name(p)}\n" for p, s in zip(nbrs, top_sim[r].tolist())),
              end="")
    if cosine is not None:
        print(f"mean cosine between two videos: {cosine:.4f} (near 1: the features barely tell videos apart)")
    rows.insert(0, (f"{ckpt['method']} {what}, {cfg.ckpt} | middle frames | cosine similarity of the videos' "
                    f"features under each neighbour" + (f" | mean between two videos {cosine:.3f}" if cosine else ""),
                    [], None))
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    training.image_grid(rows).save(out)
    for s in feats["skipped"]:
        print(f"  SKIPPED {s['path']}: {s['reason']}")
    print(f"wrote {out} ({time.perf_counter() - t0:.1f}s)")
    return {"queries": result, "between_video_cosine": cosine, "skipped": feats["skipped"], "out": str(out)}


if __name__ == "__main__":
    training.command(main)
