"""The README's numbers and defaults against the code and the committed results they come from."""
import re
import sys

import lss
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bench  # noqa: E402
import pretrain_clip  # noqa: E402

README = (ROOT / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 3)
    return README[start:end if end > 0 else None]


def model_row(run: dict, kind: str, variant: str) -> tuple:
    m = next(m for m in run["model"]["models"] if m["kind"] == kind)
    r = next(r for r in m["rows"] if r["variant"] == variant)
    return m["batch_clips"], r["clips_per_s"], r["mfu"] * 100


def test_speed_table_matches_benchmarks_md():
    runs = bench.previous_runs(ROOT / "BENCHMARKS.md")
    h200, h100 = runs["gpu NVIDIA H200"], runs["gpu NVIDIA H100 80GB HBM3"]
    speed = section("Speed")
    top = "bf16 + channels_last_3d + torch.compile + fused SGD"
    b, cps, mfu = model_row(h200, "cvrl", top)
    assert f"{cps:.0f} clips/s, **{mfu:.1f}% MFU** at batch {b}" in speed
    b, cps, mfu = model_row(h200, "lss", "bf16 + torch.compile + fused AdamW")
    assert f"{cps:.0f} clips/s, **{mfu:.1f}% MFU** at batch {b}" in speed
    for kind in ("cvrl", "lss"):
        _, cps, mfu = model_row(h200, kind, "bf16 autocast")
        assert f"{cps:.0f} clips/s, {mfu:.1f}%" in speed
    for kind, variant in (("cvrl", top), ("lss", "bf16 + torch.compile + fused AdamW")):
        _, cps, mfu = model_row(h100, kind, variant)
        assert f"{cps:.0f} clips/s, {mfu:.1f}%" in speed
    aug = next(r for r in h200["augment"]["rows"] if r["device"].startswith("cuda"))
    assert f"{aug['augment_clips_per_s']:.0f} vs {aug['torchvision_clips_per_s']:.0f} clips/s: " \
           f"x{aug['speedup']:.1f} on the H200" in speed


def test_lss_section_states_the_defaults():
    text = section("LSS (`lss.py`)")
    c = pretrain_clip.Config()
    assert f"ViT width {c.width}, {c.layers} blocks, patch {c.patch}, {c.size} px; text width {c.text_width}" in text
    assert f"{c.stills:,} synthetic *captioned stills*" in text
    assert f"(`--trail {lss.Config.trail:g}`)" in text
    assert lss.Config.init == "tiny"
    m = re.search(r"τ_t = ([0-9.]+) τ_s", README)
    assert m and float(m.group(1)) == lss.TEACHER_STUDENT_TAU_RATIO
