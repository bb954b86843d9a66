"""
A picture of what cvrl.py or lss.py trains on: for a few videos of its training data, the clips as decoded and the
augmented views the network is fed, with their frame numbers. Every flag but the three below is the method's own
(--data, --dataset, --frames, --size, --seed, ...) and goes to its parser, so the picture shows exactly the views
that command would train on (the same samplers and augmentation code).

    python scripts/show.py --method cvrl --out cvrl.png                   # the synthetic videos, cvrl.py's views
    python scripts/show.py --method lss --data ~/videos --out lss.png     # your videos, lss.py's views
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import data  # noqa: E402
import training  # noqa: E402


def _upscale(img: np.ndarray, factor: float) -> np.ndarray:
    """uint8 (H, W, 3) -> nearest-neighbour scaled by `factor` (pixels stay visible as pixels)."""
    H, W = img.shape[:2]
    ys = np.minimum((np.arange(max(1, round(H * factor))) / factor).astype(int), H - 1)
    xs = np.minimum((np.arange(max(1, round(W * factor))) / factor).astype(int), W - 1)
    return img[ys][:, xs]


def _to_images(x: torch.Tensor, factor: float) -> list:
    """float (C, T, H, W) in [0, 1] -> T uint8 (H, W, 3) images, scaled by `factor`."""
    frames = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()  # (T, H, W, 3)
    return [_upscale(f, factor) for f in frames]


def _aug_text(a: data.AugmentConfig) -> str:
    return (f"crop area {a.area[0]:g}-{a.area[1]:g}, flip p {a.flip_p:g}, colour jitter p {a.jitter_p:g}, "
            f"gray p {a.gray_p:g}, blur p {a.blur_p:g}, solarize p {a.solarize_p:g}"
            + (", drawn per frame" if a.per_frame else ""))


class _RecordingSampler:
    """Wraps a sampler and keeps what it chose last (the video's frame count and fps, the clips' frame indices),
    so `show` can write the start frames under the pictures. VideoDataset calls the sampler once per attempt; the
    last call is the video that was decoded."""

    def __init__(self, sampler):
        self.sampler, self.last = sampler, None

    def __call__(self, num_frames, fps, rng):
        clips = self.sampler(num_frames, fps, rng)
        self.last = (num_frames, fps, [np.asarray(c) for c in clips])
        return clips


def _frames_text(idx) -> str:
    """'frames 8..22 every 2', or every index when they are not evenly spaced (a clip that wraps around the end)."""
    step = int(idx[1] - idx[0]) if len(idx) > 1 else 0
    if step > 0 and np.all(np.diff(idx) == step):
        return f"frames {idx[0]}..{idx[-1]} every {step}"
    return "frames " + " ".join(str(int(i)) for i in idx)


def picture(method: str, method_argv, out, num_videos: int = 3, tile: int = 64) -> Path:
    """A PNG of what `method` (cvrl | lss) trains on, for a few videos of its training data: the clips as decoded
    (the canvas) and the augmented views the network is fed, with their frame numbers. `method_argv` are the
    method's own flags (--data, --dataset, --frames, --size, --seed, ...): the picture shows exactly the views that
    command would train on (the same samplers and augmentation code), chosen by --seed. Global views are drawn
    `tile` pixels wide per frame; everything else at the same scale (a 16-px local view is a quarter of a 32-px one)."""
    module = importlib.import_module(method)
    cfg = module.parse_args(list(method_argv))
    videos = data.load_split(cfg.dataset, cfg.data, cfg.annotations, cfg.fold, "train", cfg.synthetic)
    if method == "cvrl":
        sampler = module.PairSampler(cfg.frames, cfg.stride, cfg.interval, cfg.power)
    else:
        sampler = module.MultiViewSampler(cfg.frames, cfg.stride, cfg.local_views, cfg.local_stride)
    recorder = _RecordingSampler(sampler)
    dataset = data.VideoDataset(videos, recorder, canvas=cfg.canvas, resample=False, min_frames=cfg.frames)
    items, picks = [], []
    for i in np.random.default_rng(cfg.seed).permutation(len(videos)):  # as in training, each video's own generator
        item = dataset[(int(i), cfg.seed)]
        for b in item["bad"]:
            print(f"skipped unreadable video: {b}", file=sys.stderr)
        if item["ok"]:
            items.append(item)
            picks.append(recorder.last)
        if len(items) == num_videos:
            break
    if not items:
        raise data.DatasetError(f"none of the {len(videos)} videos of {videos.name} could be decoded")
    video = torch.stack([it["video"] for it in items])  # (N, V, T, H, W, 3) uint8: V clips per video
    g = torch.Generator().manual_seed(cfg.seed)
    f = tile / cfg.size  # display scale: a network-input pixel is f screen pixels
    rows = []

    def header(n, item):
        path = videos.paths[item["index"]]
        info = data.probe(path)
        name = os.path.relpath(path, cfg.data) if cfg.data else os.path.basename(path)
        rows.append((f"{n + 1}. {name}: {info.num_frames} frames at {info.fps:.3g} fps, {info.width}x{info.height} "
                     f"| decoded to a {cfg.canvas[0]}x{cfg.canvas[1]} canvas (scaled to cover, centre crop)", [], None))

    def decoded(n, v):  # clip v of video n as decoded: the canvas, before any augmentation
        return _to_images(video[n, v].permute(3, 0, 1, 2).float() / 255, f)  # (T, H, W, 3) -> (C, T, H, W)

    if method == "cvrl":
        aug1, aug2 = module.augment_configs(cfg)
        x1 = data.augment(data.to_bcthw(video[:, 0]), cfg.size, aug1, g)  # (N, C, T, S, S) in [0, 1], as cvrl.train does
        x2 = data.augment(data.to_bcthw(video[:, 1]), cfg.size, aug2, g)
        for n, (item, (_, fps, (a, b))) in enumerate(zip(items, picks)):
            header(n, item)
            dt = int(b[0]) - int(a[0])  # the interval between the two clips' start frames
            rows += [(f"clip 1 as decoded: {_frames_text(a)}, starts at {a[0] / fps:.2f} s", decoded(n, 0), None),
                     (f"view 1, the network's input ({cfg.size}px): {_aug_text(aug1)}", _to_images(x1[n], f), None),
                     (f"clip 2 as decoded: {_frames_text(b)}, starts {dt:+d} frames ({dt / fps:+.2f} s) from clip 1",
                      decoded(n, 1), None),
                     (f"view 2 ({cfg.size}px): {_aug_text(aug2)}", _to_images(x2[n], f), None)]
    else:
        aug_global, aug_local = module.view_augmentations(cfg)
        groups = module.make_views(video, cfg, aug_global, aug_local, g)  # CLIP-normalised, (views*N, T, C, H, W)
        mean = torch.tensor(module.CLIP_MEAN).view(1, 1, 3, 1, 1)
        std = torch.tensor(module.CLIP_STD).view(1, 1, 3, 1, 1)
        groups = [(x * std + mean).permute(0, 2, 1, 3, 4) for x in groups]  # back to [0, 1], (views*N, C, T, H, W)
        N = len(items)
        local_idx = module.local_frame_index(cfg.frames, cfg.local_frames).numpy()
        for n, (item, (_, fps, views)) in enumerate(zip(items, picks)):
            header(n, item)
            g1, g2 = views[0], views[1]
            span = (len(g1) - 1) * cfg.stride / fps
            rows += [(f"global 1 as decoded: {_frames_text(g1)} (spans {span:.2f} s), starts at {g1[0] / fps:.2f} s",
                      decoded(n, 0), None),
                     (f"global view 1 ({cfg.size}px): {_aug_text(aug_global)}", _to_images(groups[0][n], f), None),
                     (f"global view 2 ({cfg.size}px): {_frames_text(g2)}, shifted by {int(g2[0]) - int(g1[0])} frames",
                      _to_images(groups[0][N + n], f), None)]
            for k in range(cfg.local_views):  # view-major: local view k of video n is row k * N + n
                shown = views[2 + k][local_idx]
                rows.append((f"local view {k + 1} ({cfg.local_size}px, {cfg.local_frames} frames): "
                             f"{_frames_text(shown)}, starts at {shown[0] / fps:.2f} s"
                             + (f"; {_aug_text(aug_local)}" if k == 0 else ""),
                             _to_images(groups[1][k * N + n], f), None))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    training.image_grid(rows).save(out)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--method", required=True, choices=["cvrl", "lss"])
    p.add_argument("--out", required=True, help="the PNG to write")
    p.add_argument("--videos", type=int, default=3, help="how many videos (chosen by the method's --seed)")
    p.add_argument("--tile", type=int, default=64, help="pixels per frame of a network-size view")
    a, rest = p.parse_known_args(argv)
    try:
        out = picture(a.method, rest, a.out, a.videos, a.tile)
    except data.DatasetError as e:
        sys.exit(f"error: {e}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(training.command(main))
