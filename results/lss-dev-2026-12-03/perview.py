"""How often an LSS checkpoint's student, and the frozen CLIP it started from, name the true class on the training
views themselves (augmented as in training), per view type. A record of the 2026-12-04 oracle diagnosis (runs.md),
not a tool: run from the repository root, at one thread, beside nothing heavy.

    python results/lss-dev-2026-12-03/perview.py '{}' dev/o_base/checkpoint.pt                        # lss.py's views
    python results/lss-dev-2026-12-03/perview.py '{"jitter_p": 0, "gray_p": 0}' dev/o_base/checkpoint.pt  # no colour

The first argument overrides fields of both views' data.AugmentConfig (JSON). 10 batches of 16 training videos
(160 videos, 2 global and 2 local views each), drawn with seed 0; the concept vectors are the run's own file."""
import dataclasses
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import data  # noqa: E402
import lss  # noqa: E402

torch.set_num_threads(1)
override = json.loads(sys.argv[1])
for path in map(Path, sys.argv[2:]):
    ck = torch.load(path, map_location="cpu", weights_only=False)
    conf = ck["config"]
    fields = {f.name for f in dataclasses.fields(lss.Config)}
    cfg = lss.Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in conf.items() if k in fields - {"synthetic"}},
                     synthetic=data.SyntheticWorld(**conf["synthetic"]))
    videos = data.load_split(cfg.dataset, cfg.data, cfg.annotations, cfg.fold, "train", cfg.synthetic)
    dataset = data.VideoDataset(videos, lss.MultiViewSampler(cfg.frames, cfg.stride, cfg.local_views,
                                                             cfg.local_stride),
                                canvas=cfg.canvas, resample=True, min_frames=cfg.frames)
    C = F.normalize(torch.load(next(path.parent.glob("concepts-*.pt")), weights_only=False)["C_cat"], dim=-1)
    concept_of = torch.tensor([ck["concept_names"].index(videos.classes[y]) for y in videos.labels])
    augs = [dataclasses.replace(a, **override) for a in lss.view_augmentations(cfg)]
    for which in ("student", "frozen start"):
        if which == "student":
            vit = lss.Backbone(conf, "proj").vit
            vit.load_state_dict(ck["student"])
        else:
            vit = lss.VideoViT.from_clip(lss.load_clip(cfg.clip).visual, cfg.cls_mode, cfg.frames)
        vit.eval()
        g = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True,
                                             generator=torch.Generator().manual_seed(0))
        right = {"global": [], "local": []}
        with torch.no_grad():
            for i, batch in enumerate(loader):
                if i == 10:
                    break
                video, B = batch["video"], len(batch["index"])  # (B, 2+L, T, H, W, 3) uint8
                for kind, x in zip(right, lss.make_views(video, cfg, *augs, g)):
                    pred = (F.normalize(vit(x), dim=-1) @ C.t()).argmax(-1).view(-1, B)  # (views, B)
                    right[kind].append((pred == concept_of[batch["index"]]).float().flatten())
        print(path, which, override, {k: round(100 * torch.cat(v).mean().item(), 1) for k, v in right.items()})
