"""
The replication study: a grid of short pretraining runs, each read out by a linear probe, every row mean ± std over
seeds, written as JSON, a markdown table and two plots (and, on request, the results block of docs/results.md).

Rows, grouped by the claim they test:
  baselines     random-init encoder (no pretraining: the floor), supervised training of the same encoder on the
                labels (scripts/supervised.py: the ceiling), CVRL with its defaults
  interval      CVRL with each interval distribution between the two clips: decreasing P(t) with power 0.5 / 1
                (default) / 2, uniform, increasing (paper Fig. 3)
  consistency   CVRL with spatial augmentation drawn per frame instead of per clip (temporally inconsistent)
  aug           CVRL with temporal augmentation only (no spatial augmentation) / spatial only (both clips the same
                frames)
  data          CVRL on 25 / 50 / 100% of the pretraining videos (the probe always uses all labelled videos)
  nuisance      the synthetic videos' appearance nuisance (--nuisance): CVRL and random-init at each level
  lss           LSS, tiny CLIP from random weights: distillation only, + uniform prior, + concept alignment, full;
                and the LSS network at initialisation (no training)
  lss_fix       LSS with what might keep the teacher's output off uniform: a joint space the concepts span, a
                teacher-temperature warm-up, the uniform prior's weight, a pre-trained start (scripts/lss_start.py:
                the image tower trained with CVRL's InfoNCE first, probed frozen, then LSS from it; and the same
                InfoNCE without the MLP head) (preset lss-explore)
  search        CVRL at the quick preset's budget (18 epochs) with other batch sizes and learning rates: how the
                quick preset's CVRL flags were chosen (preset cvrl-search)
  lss_pre       LSS from the pretrained tiny CLIP (lss.py's default start): the frozen CLIP (lss.py --epochs 0) and
                lss.py's LSS, distillation only (preset lss-pretrained); + uniform prior, + concept alignment, the
                full loss (preset lss-ablations)
  lss_space     the same, the full loss, with the classes' descriptions as the category space (lss-ablations)
  controls      the same start with the true class as the target (the oracle: what distillation can teach with
                perfect targets, these views and steps; lss-pretrained: lss.py's loss, lss-ablations: the full loss)
                and, with the full loss, the truth given for 50% / 25% of the videos: the gain over the frozen
                CLIP as a function of how often the target is right (preset lss-ablations)
  finetune      CVRL's transfer claim by fine-tuning (scripts/finetune.py): the CVRL row's checkpoint fine-tuned end to
                end on the labelled videos vs the same network fine-tuned from scratch with the same recipe and steps
                (--random-init), with all labels and with 10% of them (preset finetune)

Every job runs the real scripts as subprocesses, so the study exercises exactly what a user runs:
    python cvrl.py | lss.py | scripts/supervised.py | scripts/lss_start.py --out RUN --seed S <preset flags> <row flags>
           <data flags>
    python eval_linear.py --ckpt RUN/checkpoint.pt --json RUN/linear.json --seed S <preset eval flags> <data flags>
A random-init row trains nothing: it runs eval_linear.py --random-init --seed S on the checkpoint of its base row
(same seed), which only supplies the network's config (architecture, views, data), never its weights. A trained row
may start from another row's output: lss-from-start runs lss.py --clip RUN_OF(lss-start, same seed)/clip.pt, after it.
A fine-tuning row is one command, its own test instead of the probe:
    python scripts/finetune.py --out RUN --seed S <preset finetune flags> --ckpt RUN_OF(cvrl, same seed)/checkpoint.pt
           [--random-init] <row flags> <data flags> --json RUN/finetune.json

Commands
    python scripts/replicate.py --quick                   # the CPU preset on the synthetic videos (~70 min, 2 cores)
    python scripts/replicate.py --quick --update-readme   # ... and rewrite docs/results.md's results block
    python scripts/replicate.py --preset full             # the GPU preset: longer runs, 5 seeds, 5 nuisance levels
    python scripts/replicate.py --preset lss-explore      # LSS from random init: attempts against its collapse
    python scripts/replicate.py --preset cvrl-search      # the search that chose --quick's CVRL batch size and lr
    python scripts/replicate.py --preset lss-pretrained   # LSS from the pretrained tiny CLIP, 3 seeds (~1.5 h, 2 cores)
    python scripts/replicate.py --preset lss-ablations    # the full loss's terms, description space, target quality
    python scripts/replicate.py --preset finetune         # CVRL pretrain then fine-tune vs fine-tune from scratch
    python scripts/replicate.py --preset smoke            # tiny everything, seconds per job (the tests run this)
    python scripts/replicate.py --quick --rows cvrl,cvrl-uniform   # a subset (random-init rows bring their base)
    python scripts/replicate.py --quick --dry-run         # print every job's commands and exit
    python scripts/replicate.py --quick --dataset ucf101 --data UCF-101 --annotations ucfTrainTestlist --fold 1

Output in --out (default results/replicate/<preset>, or results/replicate/<preset>-<dataset> for --dataset X):
    runs/<row>/seed<S>/   the run: checkpoint.pt, log.jsonl, linear.json, <script>.log (each script's stdout+stderr),
                          job.json (the commands of the attempt), result.json (written when the job ends)
    results.json          every job (row, seed, top1, top5, final loss, seconds, commands, error) and per-row
                          aggregates (mean, sample std with ddof=1, n); rewritten after every job
    table.md              the table (also after every job); curves.png, bars.png at the end (needs matplotlib:
                          pip install -e ".[study]"; without it the plots are skipped with a message)

Resume: re-running the same command skips every job whose result.json says it succeeded with the same commands. A job
whose commands changed (any flag: preset, row, data) starts afresh in an emptied run dir, and so does every random-init
job whose base changed. A job that was interrupted is run again with the same commands: cvrl.py, lss.py and
supervised.py resume from RUN/checkpoint.pt, and eval_linear.py reuses its cached features. Ctrl-C lets the running
script save its checkpoint, then stops (exit 130). A job that fails is recorded with its error and the tail of its
log, the grid goes on, the table marks the row, and the exit status is 1; the next run retries it.

Determinism: with the same seeds, presets, --parallel and machine, a run from scratch reproduces results.json's
numbers, hence table.md, the README block's table and the PNGs byte for byte (the plots carry no timestamp or version
metadata): on the CPU every script is deterministic (per-step/per-item seeds) for a given thread count. Another
thread count (--parallel sets OMP_NUM_THREADS) changes the summation order, and short runs amplify that. On a GPU,
cuDNN autotuning and atomics make the numbers vary in the last digits. The timings, date and environment in
results.json and the README block vary.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"cvrl": "cvrl.py", "lss": "lss.py", "supervised": "scripts/supervised.py",
           "lss_start": "scripts/lss_start.py", "finetune": "scripts/finetune.py"}
# where a job's top-1 comes from: the linear probe's JSON, except for fine-tuning, which tests its own network
RESULT_FILES = {"finetune": "finetune.json"}  # kind -> file in the run dir; every other kind: linear.json
README_BEGIN, README_END = "<!-- replicate:begin -->", "<!-- replicate:end -->"

# ----------------------------------------------------------------------------- the grid
# Table sections, in order: key -> the claim its rows test.
GROUPS = {
    "baselines": "Baselines: no pretraining (floor) and supervised training of the same encoder (ceiling)",
    "interval": "CVRL: the interval between the two clips (paper Fig. 3: decreasing P(t) is best)",
    "consistency": "CVRL: temporally consistent spatial augmentation beats per-frame augmentation",
    "aug": "CVRL: temporal and spatial augmentation both matter",
    "data": "CVRL: more pretraining videos help",
    "nuisance": "Synthetic appearance nuisance (default rows: 0): per-video looks are a shortcut for instance "
                "discrimination",
    "lss": "LSS (tiny CLIP, random init): distillation, + uniform prior, + concept alignment",
    "lss_fix": "LSS from random init: attempts to keep the teacher off the uniform distribution (not in --quick)",
    "search": "CVRL at the quick preset's budget (18 epochs): batch size and lr (preset cvrl-search, not in --quick)",
    "lss_pre": "LSS from the pretrained tiny CLIP (lss.py's default start): does it improve on the frozen CLIP "
               "(preset lss-pretrained), and what do the uniform prior and concept alignment add to "
               "distillation (preset lss-ablations)?",
    "lss_space": "LSS from the pretrained tiny CLIP, the full loss: category space (class names) vs description "
                 "space (the classes' descriptions) (preset lss-ablations)",
    "controls": "LSS controls: the true class as every video's target (the oracle; preset lss-pretrained: lss.py's "
                "loss; lss-ablations: the full loss), and with the full loss for 50% / 25% of the videos, the rest "
                "the teacher's (how good must the targets be?)",
    "finetune": "CVRL transfer by fine-tuning: pretrained vs from scratch, same network, recipe and steps (top-1 of "
                "the fine-tuned network, not a probe; preset finetune)",
}
ORACLE_FRACTIONS = (0.5, 0.25)  # the target-quality sweep's partial oracles (1.0 is the oracle row, 0 LSS itself)

# (batch size, --lr) pairs of the cvrl-search preset; --lr is the rate at a global batch of 1024 (linear scaling)
SEARCH = [(64, 0.8), (64, 1.6), (64, 6.4), (64, 12.8), (32, 1.6), (32, 3.2), (16, 1.6)]


@dataclass(frozen=True)
class Row:
    name: str                 # id: run dir and JSON key
    label: str                # what the table and the plots call it
    groups: tuple             # table sections it is shown in (GROUPS keys): its own first, then those it anchors
    kind: str                 # cvrl | lss | supervised | lss_start | finetune | random (random: eval_linear.py
                              # --random-init)
    train: tuple = ()         # flags for the training script, after the preset's
    eval: tuple = ()          # flags for eval_linear.py, after the preset's
    base: str | None = None   # random rows: the trained row (same seed) whose checkpoint gives the network's config;
                              # trained rows: a row (same seed) whose run dir "{base}" in `train` stands for
    ref: str | None = "random-init"  # the baseline row the table's Δ column subtracts (None: no Δ)
    epochs_scale: float = 1.0  # multiplies the preset's --epochs: the data-size rows keep the number of steps
    student: bool = False     # lss rows: probe the student too (eval_linear.py --network student), report both


def build_rows(nuisance_levels=(0.0,)) -> list[Row]:
    """The whole grid, in run order (a row after its base). Every flag below exists in cvrl.Config /
    lss.Config / eval_linear.Config (tests/test_replicate.py parses each command with the script's own parser)."""
    rows = [
        Row("cvrl", "CVRL default (decreasing P(t), p = 1)", ("baselines", "interval", "consistency", "aug", "data"),
            "cvrl"),
        Row("random-init", "random-init encoder (no pretraining)", ("baselines",), "random", base="cvrl", ref=None),
        Row("supervised", "supervised on the labels (same encoder)", ("baselines",), "supervised"),
        Row("cvrl-p0.5", "CVRL decreasing, p = 0.5", ("interval",), "cvrl", ("--power", "0.5")),
        Row("cvrl-p2", "CVRL decreasing, p = 2", ("interval",), "cvrl", ("--power", "2")),
        Row("cvrl-uniform", "CVRL uniform P(t)", ("interval",), "cvrl", ("--interval", "uniform")),
        Row("cvrl-increasing", "CVRL increasing P(t)", ("interval",), "cvrl", ("--interval", "increasing")),
        Row("cvrl-per-frame", "CVRL per-frame augmentation", ("consistency",), "cvrl", ("--spatial-aug", "per-frame")),
        Row("cvrl-temporal-only", "CVRL temporal augmentation only", ("aug",), "cvrl", ("--spatial-aug", "none")),
        Row("cvrl-spatial-only", "CVRL spatial augmentation only (same frames)", ("aug",), "cvrl",
            ("--interval", "same")),
        # the same number of steps as the default (4x / 2x the epochs over fewer videos): the rows then compare
        # how many videos, not how much training (with equal epochs, 25% of the videos is also 25% of the steps)
        Row("cvrl-data25", "CVRL on 25% of the videos (same steps)", ("data",), "cvrl", ("--data-fraction", "0.25"),
            epochs_scale=4.0),
        Row("cvrl-data50", "CVRL on 50% of the videos (same steps)", ("data",), "cvrl", ("--data-fraction", "0.5"),
            epochs_scale=2.0),
    ]
    for level in nuisance_levels:
        if level == 0:  # the default rows are the level-0 rows (the synthetic default is --nuisance 0)
            rows = [replace(r, groups=r.groups + ("nuisance",)) if r.name in ("cvrl", "random-init") else r
                    for r in rows]
            continue
        n = f"{level:g}"
        # eval_linear.py gets --nuisance too: with --dataset given it would not inherit the checkpoint's
        rows += [Row(f"cvrl-nuisance{n}", f"CVRL, nuisance {n}", ("nuisance",), "cvrl", ("--nuisance", n),
                     ("--nuisance", n), ref=f"random-init-nuisance{n}"),
                 Row(f"random-init-nuisance{n}", f"random-init, nuisance {n}", ("nuisance",), "random",
                     eval=("--nuisance", n), base=f"cvrl-nuisance{n}", ref=None)]
    # The LSS rows of the random-init study keep the settings they were run with, before lss.py started from a
    # pretrained tiny CLIP by default and took the views and schedule chosen for it: the videos without a motion
    # trail, scene or camera, CLIP's Kinetics prompts, 48 px views with four local views of 24 px, DINO's crop
    # areas, batch 32 at lr 4e-3, the paper's EMA momentum and 1 warmup epoch. R0 adds a random CLIP (then the
    # default). The loss weights are explicit where a row uses the uniform prior or concept alignment (lss.py's
    # default: neither).
    OLD_LSS = ("--trail", "0", "--context", "0", "--clutter", "0", "--noise", "0", "--templates", "kinetics",
               "--size", "48", "--local-size", "24", "--canvas", "64", "64", "--local-views", "4",
               "--global-area", "0.4", "1.0", "--local-area", "0.05", "0.4", "--batch-size", "32", "--lr", "4e-3",
               "--ema-horizon", "0", "--warmup-epochs", "1")
    R0 = ("--init", "random") + OLD_LSS
    FULL = ("--lambda-up", "1", "--lambda-ca", "1")  # the full loss: distillation + uniform prior + alignment
    rows += [
        Row("lss", "LSS full (distillation + uniform prior + alignment)", ("lss",), "lss", R0 + FULL, ref="lss-init"),
        # --init random: the network at step 0 is a randomly initialised CLIP, so "frozen init" IS lss.py's network
        # with random weights: eval_linear.py --random-init on an LSS checkpoint (its config, not its weights)
        Row("lss-init", "LSS network at init, frozen (no training)", ("lss",), "random", base="lss", ref=None),
        Row("lss-distill", "LSS distillation only", ("lss",), "lss", R0, ref="lss-init"),
        Row("lss-up", "LSS distillation + uniform prior", ("lss",), "lss", R0 + ("--lambda-up", "1"),
            ref="lss-init"),
        Row("lss-ca", "LSS distillation + concept alignment", ("lss",), "lss", R0 + ("--lambda-ca", "1"),
            ref="lss-init"),
        # what might stop the teacher's distribution over the 8 class concepts from staying uniform; the
        # preset "lss-explore" runs them, --quick does not (time)
        Row("lss-span", "LSS, 8-d joint space: the 8 concepts span it", ("lss_fix",), "lss",
            R0 + FULL + ("--embed-dim", "8"), ref="lss-init"),
        Row("lss-tau-warmup", "LSS, teacher temperature 0.004 -> 0.04 over the run", ("lss_fix",), "lss",
            R0 + FULL + ("--tau-t-warmup", "0.004", "--tau-t-warmup-epochs", "3"), ref="lss-init"),
        Row("lss-up0.1", "LSS, uniform prior weight 0.1", ("lss_fix",), "lss",
            R0 + ("--lambda-up", "0.1", "--lambda-ca", "1"), ref="lss-init"),
        Row("lss-up10", "LSS, uniform prior weight 10", ("lss_fix",), "lss",
            R0 + ("--lambda-up", "10", "--lambda-ca", "1"), ref="lss-init"),
        # a pre-trained start, the paper's setting in small: lss.py's image tower trained first with CVRL's InfoNCE
        # on the same videos (scripts/lss_start.py; its text tower stays random), probed frozen, then LSS from it.
        # Temperatures: the random-init values, since a random text tower has no narrow band of cosines (lss.py
        # AUTO_TAU); the start's probe is the Δ reference of the LSS run
        Row("lss-start", "InfoNCE-pretrained image tower, frozen (the start; no LSS)", ("lss_fix",), "lss_start",
            ref="lss-init"),
        Row("lss-from-start", "LSS from the InfoNCE-pretrained start", ("lss_fix",), "lss",
            ("--init", "clip", "--clip", "{base}/clip.pt", "--tau-s", "0.1", "--tau-t", "0.04") + FULL,
            base="lss-start", ref="lss-start"),
        # the same start without CVRL's MLP head: InfoNCE on the joint-space feature itself, the one whose cosines to
        # the concepts are LSS's logits (the head's BatchNorm lets the tower keep a direction common to all videos)
        Row("lss-start-nohead", "InfoNCE on the joint-space feature (no MLP head), frozen", ("lss_fix",), "lss_start",
            ("--head", "none"), ref="lss-init"),
    ]
    # LSS from the pretrained tiny CLIP (lss.py's own pretraining, run once and cached; its own seed is fixed, so the
    # seeds below vary LSS only), in lss.py's default world. The frozen start is lss.py --epochs 0: its step-0
    # zero-shot and the probe of its checkpoint (teacher = the CLIP's image tower, temporal branch a no-op). Every
    # trained row reports the teacher (the checkpoint's network, SVT's choice) and the student.
    pre = dict(groups=("lss_pre",), kind="lss", ref="clip-frozen", student=True)
    rows += [
        Row("clip-frozen", "tiny CLIP, frozen (the start; no LSS)", ("lss_pre", "lss_space", "controls"), "lss",
            ("--epochs", "0"), ref=None),
        Row("lss-pre", "LSS (lss.py's default: distillation only)", ("lss_pre", "controls"),
            "lss", ref="clip-frozen", student=True),
        Row("lss-pre-up", "LSS distillation + uniform prior", train=("--lambda-up", "1"), **pre),
        Row("lss-pre-ca", "LSS distillation + concept alignment", train=("--lambda-ca", "1"), **pre),
        Row("lss-pre-full", "LSS full loss (distillation + uniform prior + alignment)", train=FULL,
            **{**pre, "groups": ("lss_pre", "lss_space", "controls")}),
        Row("lss-pre-desc", "LSS full loss, description space as the category space",
            train=("--concepts", "descriptions") + FULL, **{**pre, "groups": ("lss_space",)}),
        Row("lss-oracle", "oracle: the true class as every video's target", train=("--targets", "oracle"),
            **{**pre, "groups": ("controls",)}),
        Row("lss-oracle-full", "oracle, full loss: the true class as every video's target",
            train=("--targets", "oracle") + FULL, **{**pre, "groups": ("controls",)}),
    ]
    # the target-quality sweep, with the full loss (run before lss.py's default became distillation alone)
    rows += [Row(f"lss-oracle{round(f * 100)}", f"full loss, the true class as the target of {f:.0%} of the "
                 "videos", train=("--targets", "oracle", "--oracle-fraction", f"{f:g}") + FULL,
                 **{**pre, "groups": ("controls",)})
             for f in ORACLE_FRACTIONS]
    # the search that chose the quick preset's CVRL flags (preset cvrl-search: cvrl.py --epochs 18, so its "cvrl"
    # row is the default batch 64 at lr 3.2): same compute, other batch sizes and learning rates
    rows += [Row(f"search-b{b}-lr{lr}", f"CVRL, batch {b}, --lr {lr}", ("search",), "cvrl",
                 (() if b == 64 else ("--batch-size", str(b))) + ("--lr", str(lr))) for b, lr in SEARCH]
    # CVRL's transfer claim (fine-tuned end to end, pretrained >> from scratch): the "cvrl" row's checkpoint
    # fine-tuned by scripts/finetune.py, against the same network from scratch (--random-init, the same recipe and
    # number of steps); with every labelled video and with 10% of them, for 10x the epochs: the same number of steps
    # (the Δ column: minus the scratch row with the same labels)
    for frac, tag, what in ((1.0, "", "all labels"), (0.1, "-labels10", "10% of the labels")):
        extra = () if frac == 1.0 else ("--data-fraction", f"{frac:g}")
        rows += [Row(f"ft-cvrl{tag}", f"CVRL pretrain, then fine-tune ({what})", ("finetune",), "finetune",
                     ("--ckpt", "{base}/checkpoint.pt") + extra, base="cvrl", ref=f"ft-scratch{tag}",
                     epochs_scale=1 / frac),
                 Row(f"ft-scratch{tag}", f"fine-tune from scratch, same steps ({what})", ("finetune",), "finetune",
                     ("--ckpt", "{base}/checkpoint.pt", "--random-init") + extra, base="cvrl", ref=None,
                     epochs_scale=1 / frac)]
    return rows


# Presets: the flags every job of a kind gets. "encoder" goes to cvrl.py AND supervised.py: the upper bound trains
# the same network on the same clips. Step counts marked TUNE are placeholders until timed on the target machine.
TINY_VIEWS = ["--frames", "4", "--stride", "2", "--size", "32", "--canvas", "32", "32"]
PRESETS = {
    "quick": dict(  # CPU, synthetic videos (cvrl.py's defaults otherwise: tiny R3D, 8x32 px; CVRL at batch 16)
        seeds=[0, 1, 2],
        parallel=2,                                                       # two 1-thread jobs on 2 cores: 1.5x
        encoder=[],
        # 540 steps of 16 videos at lr 1.6 (0.025 at 16 videos, linear scaling). The default's batch of 64 does 126
        # steps in the same time and was +1.7 over random init; batch 16 gave +15.5/+11.5 on seeds 0/1
        # (preset cvrl-search, results/replicate/cvrl-search/); ~2.5 min per job
        cvrl=["--epochs", "18", "--batch-size", "16", "--lr", "1.6", "--workers", "1"],
        lss=["--epochs", "2", "--workers", "1", "--test-clips", "1"],  # 30 steps: the teacher is uniform by step 30
        lss_start=["--epochs", "20", "--workers", "1"],                   # 300 steps, ~7 min (lss-explore only)
        supervised=["--epochs", "10", "--workers", "1"],
        eval=["--workers", "1"],
        nuisance=[0.0, 0.5, 1.0],
        finetune=["--epochs", "30", "--workers", "1"],
        rows=None,  # all ...
        exclude=["lss_fix", "search", "lss_pre", "lss_space", "controls", "finetune"],  # ... but the LSS attempts, the CVRL search,
        # the pretrained-start LSS study and fine-tuning (presets of their own): 90 minutes is the budget
    ),
    "full": dict(  # one GPU, synthetic videos: longer schedules, more seeds and nuisance levels
        seeds=[0, 1, 2, 3, 4],
        encoder=[],
        cvrl=["--epochs", "200", "--workers", "8"],                      # TUNE
        lss=["--epochs", "60", "--workers", "8"],                        # TUNE
        lss_start=["--epochs", "100", "--workers", "8"],                 # TUNE
        supervised=["--epochs", "60", "--workers", "8"],                 # TUNE
        finetune=["--epochs", "60", "--workers", "8"],                   # TUNE
        eval=["--workers", "8"],
        nuisance=[0.0, 0.25, 0.5, 0.75, 1.0],
        rows=None,
        exclude=["search"],  # the quick preset's search: not for these schedules
    ),
    "lss-explore": dict(  # CPU: the LSS rows and the attempts to keep its teacher from a uniform output, one seed
        seeds=[0],
        parallel=2,
        encoder=[],
        cvrl=[], supervised=[],
        lss=["--epochs", "3", "--workers", "1", "--test-clips", "1"],  # 45 steps: the teacher is uniform by step 30
        lss_start=["--epochs", "20", "--workers", "1"],                   # 300 steps of InfoNCE, ~7 min
        eval=["--workers", "1"],
        nuisance=[0.0],
        rows=["lss", "lss-init", "lss-distill", "lss-span", "lss-tau-warmup", "lss-up0.1", "lss-up10", "lss-start",
              "lss-from-start", "lss-start-nohead"],
    ),
    "lss-pretrained": dict(  # CPU: the claim and its upper bound: LSS and the oracle from the tiny CLIP, 3 seeds
        seeds=[0, 1, 2],      # (lss.py's defaults; ~15 min per LSS job at 1 thread beside another, ~50 min in all)
        parallel=2,
        encoder=[],
        cvrl=[], supervised=[], lss_start=[],
        lss=["--workers", "1"],
        eval=["--workers", "1"],
        nuisance=[0.0],
        rows=["clip-frozen", "lss-pre", "lss-oracle"],
    ),
    "lss-ablations": dict(  # CPU: the paper's ablations and the target-quality sweep in the same setting (~2.5 h)
        seeds=[0, 1, 2],
        parallel=2,
        encoder=[],
        cvrl=[], supervised=[], lss_start=[],
        # 2 local views and 1 warmup epoch: lss.py's defaults when these rows ran (since 2026-12-04: none and 3),
        # pinned so that the commands still make the runs recorded (results/replicate/relabel_2026-12-04c.py)
        lss=["--workers", "1", "--local-views", "2", "--warmup-epochs", "1"],
        eval=["--workers", "1"],
        nuisance=[0.0],
        rows=["clip-frozen", "lss-pre-up", "lss-pre-ca", "lss-pre-full", "lss-pre-desc", "lss-oracle-full"]
        + [f"lss-oracle{round(f * 100)}" for f in ORACLE_FRACTIONS],
        beside="lss-pretrained",  # target_quality.png draws lss.py's LSS and its oracle from that grid beside
    ),
    "cvrl-search": dict(  # CPU: how the quick preset's CVRL flags were chosen, two seeds (~30 min on 2 cores)
        seeds=[0, 1],
        parallel=2,
        encoder=[],
        cvrl=["--epochs", "18", "--workers", "1"],  # the quick preset's budget at the default batch 64, lr 3.2
        lss=[], supervised=[], lss_start=[],
        eval=["--workers", "1"],
        nuisance=[0.0],
        rows=["cvrl", "random-init"] + [f"search-b{b}-lr{lr}" for b, lr in SEARCH],
    ),
    "finetune": dict(  # CPU: CVRL pretrain then fine-tune vs fine-tune from scratch, 3 seeds
        seeds=[0, 1, 2],
        parallel=2,
        encoder=[],
        cvrl=["--epochs", "18", "--batch-size", "16", "--lr", "1.6", "--workers", "1"],  # the quick preset's CVRL
        lss=[], supervised=[], lss_start=[],
        finetune=["--epochs", "30", "--workers", "1"],  # scripts/finetune.py's CPU defaults: 900 steps of 16 videos
        eval=["--workers", "1"],
        nuisance=[0.0],
        # the probe of the same checkpoint and its random-init baseline too: linear probe vs fine-tuning
        rows=["cvrl", "random-init", "ft-cvrl", "ft-scratch", "ft-cvrl-labels10", "ft-scratch-labels10"],
    ),
    "smoke": dict(  # plumbing only: 2 steps per run, a 5-epoch probe at a fixed lr, one seed
        seeds=[0],
        encoder=TINY_VIEWS,
        cvrl=["--batch-size", "8", "--head-hidden", "64", "--epochs", "1", "--max-steps", "2", "--workers", "0",
              "--log-every", "1"],
        lss=["--width", "64", "--layers", "2", "--embed-dim", "32", "--text-width", "64", "--text-layers", "1",
             "--size", "32", "--local-size", "16", "--canvas", "32", "32", "--frames", "4", "--stride", "2",
             "--local-frames", "2", "--local-views", "2", "--templates", "single", "--batch-size", "4",
             "--workers", "0", "--log-every", "1", "--epochs", "1", "--max-steps", "2", "--no-zero-shot-eval"],
        lss_start=["--width", "64", "--layers", "2", "--embed-dim", "32", "--text-width", "64", "--text-layers", "1",
                   "--size", "32", "--canvas", "32", "32", "--frames", "4", "--stride", "2", "--head-hidden", "64",
                   "--batch-size", "4", "--workers", "0", "--log-every", "1", "--epochs", "1", "--max-steps", "2"],
        supervised=["--batch-size", "8", "--epochs", "1", "--max-steps", "2", "--workers", "0", "--log-every", "1"],
        finetune=["--batch-size", "8", "--epochs", "1", "--max-steps", "2", "--workers", "0", "--log-every", "1",
                  "--test-clips", "1"],  # not in its rows: --rows ft-cvrl,ft-scratch (tests/test_replicate.py)
        eval=["--epochs", "5", "--lr", "0.1", "--train-views", "1", "--test-clips", "1", "--workers", "0"],
        nuisance=[0.0],
        rows=["cvrl", "random-init", "supervised", "lss", "lss-init"],
    ),
}


def select_rows(rows: list[Row], names) -> list[Row]:
    """The rows named (all if None), plus the base of every row among them that has one, in grid order."""
    if not names:
        return rows
    by_name = {r.name: r for r in rows}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"error: unknown row(s) {unknown}; the grid has {list(by_name)}")
    keep = set(names) | {by_name[n].base for n in names if by_name[n].base}
    return [r for r in rows if r.name in keep]


def preset_rows(P: dict, levels, names=None) -> list[Row]:
    """The rows a run of preset P works on: those named by --rows (with their bases), else the preset's own rows
    without its excluded groups (--quick leaves out the LSS attempts and the CVRL search)."""
    rows = select_rows(build_rows(levels), names or P["rows"])
    return rows if names else [r for r in rows if r.groups[0] not in P.get("exclude", [])]


# ----------------------------------------------------------------------------- jobs

@dataclass
class Job:
    row: Row
    seed: int
    dir: Path
    cmds: list             # [[script, flags...], ...]: run as `python script flags...` from the repository root
    key: dict              # what must not change for a finished result to be reused
    needs: str | None = None  # id of the job that must have succeeded first (the row's base)
    threads: int | None = None  # OMP_NUM_THREADS of its scripts (set when jobs run side by side; None: inherit)
    id: str = field(init=False)

    def __post_init__(self):
        self.id = f"{self.row.name}/seed{self.seed}"


def rel(path: Path) -> str:
    """Paths in commands relative to the repository root when inside it (the scripts run there): the recorded
    commands then do not depend on where the repository is checked out."""
    path = Path(path).resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def scale_epochs(flags: list, scale: float, kind: str) -> list:
    """The preset's flags with its --epochs value multiplied by `scale` (rounded: the scripts take whole epochs)."""
    if scale == 1.0:
        return list(flags)
    if "--epochs" not in flags:
        raise ValueError(f"a row scales the {kind} epochs, so the preset must set --epochs for {kind}")
    flags = list(flags)
    i = flags.index("--epochs") + 1
    flags[i] = str(round(float(flags[i]) * scale))
    return flags


def make_jobs(rows: list[Row], P: dict, out: Path, data_flags: list) -> list[Job]:
    """Seed-major (every row of seed 0, then seed 1, ...): a partial grid already has a full first table."""
    jobs, by_id = [], {}
    for seed in P["seeds"]:
        for row in rows:
            run = out / "runs" / row.name / f"seed{seed}"
            probe = ["eval_linear.py", "--seed", str(seed), "--json", rel(run / "linear.json"), *P["eval"], *row.eval,
                     *data_flags]
            if row.kind == "random":
                base = by_id.get(f"{row.base}/seed{seed}")
                if base is None:
                    raise ValueError(f"row {row.name}: its base {row.base!r} must come earlier in the grid")
                # --cache: the random network's features live in this row's own run dir, not in the base's
                cmds = [probe[:1] + ["--ckpt", rel(base.dir / "checkpoint.pt"), "--random-init", "--cache",
                                     rel(run / "features")] + probe[1:]]
                job = Job(row, seed, run, cmds, {"cmds": cmds, "base": base.key["cmds"]}, needs=base.id)
            else:
                shared = P["encoder"] if row.kind in ("cvrl", "supervised") else []
                row_flags, base = list(row.train), None
                if row.base:  # the row starts from another row's output, e.g. lss.py --clip {base}/clip.pt
                    base = by_id.get(f"{row.base}/seed{seed}")
                    if base is None:
                        raise ValueError(f"row {row.name}: its base {row.base!r} must come earlier in the grid")
                    row_flags = [f.replace("{base}", rel(base.dir)) for f in row_flags]
                train = [SCRIPTS[row.kind], "--out", rel(run), "--seed", str(seed), *shared,
                         *scale_epochs(P[row.kind], row.epochs_scale, row.kind), *row_flags, *data_flags]
                if row.kind == "finetune":  # tests its own fine-tuned network: no probe
                    cmds = [train + ["--json", rel(run / RESULT_FILES["finetune"])]]
                else:
                    cmds = [train, probe[:1] + ["--ckpt", rel(run / "checkpoint.pt")] + probe[1:]]
                    if row.student:  # the student's probe beside the teacher's
                        cmds.append(probe[:1] + ["--ckpt", rel(run / "checkpoint.pt"), "--network", "student"]
                                    + [rel(run / "student.json") if a == rel(run / "linear.json") else a
                                       for a in probe[1:]])
                job = Job(row, seed, run, cmds, {"cmds": cmds} if base is None else
                          {"cmds": cmds, "base": base.key["cmds"]}, needs=base.id if base else None)
            jobs.append(job)
            by_id[job.id] = job
    return jobs


class JobFailed(Exception):
    def __init__(self, message: str, tail: str = ""):
        super().__init__(message)
        self.tail = tail


def run_command(cmd: list, log_path: Path, threads: int | None = None) -> float:
    """`python cmd...` from the repository root, stdout+stderr appended to log_path (`tail -f` it to watch).
    Returns its wall-clock seconds; raises JobFailed with the log's tail on a nonzero exit."""
    t = time.perf_counter()
    env = dict(os.environ, PYTHONUNBUFFERED="1", TQDM_MININTERVAL="30")  # live logs, few progress-bar redraws
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # torch's intra-op threads: side-by-side jobs share the cores
    with open(log_path, "a") as f:
        f.write(f"\n$ python {' '.join(cmd)}\n")
        f.flush()
        proc = subprocess.Popen([sys.executable, *cmd], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            # Ctrl-C reached the child too (same process group): cvrl.py / lss.py / supervised.py write their
            # checkpoint before exiting. Give them time, so the next run resumes instead of starting over.
            try:
                proc.wait(timeout=120)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
                proc.wait()
            raise
    if rc != 0:
        raise JobFailed(f"`python {cmd[0]}` exited with status {rc} (log: {rel(log_path)})", tail(log_path))
    return time.perf_counter() - t


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return Path(path).read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def read_log(path: Path) -> list[dict]:
    """The training records of a log.jsonl that carry a loss, one per step: a resumed run re-logs the steps after
    its last checkpoint (the file is appended to), and the later record wins."""
    by_step = {}
    if path.exists():
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if "loss" in rec or any(k.endswith("zero_shot_top1") for k in rec):  # the teacher's or the student's
                by_step.setdefault(rec["step"], {}).update(rec)
    return [by_step[s] for s in sorted(by_step)]


def run_job(job: Job) -> dict:
    """The real runner: every command of the job, then what the study keeps from their outputs."""
    seconds = {}
    for cmd in job.cmds:
        name = Path(cmd[0]).stem + ("_student" if "student" in cmd else "")
        seconds[name] = round(run_command(cmd, job.dir / f"{name}.log", job.threads), 1)
    probe = json.loads((job.dir / RESULT_FILES.get(job.row.kind, "linear.json")).read_text())
    res = {"top1": probe["top1"], "top5": probe["top5"], "num_train": probe["num_train"],
           "num_test": probe["num_test"], "seconds": seconds}
    if "classifier" in probe:  # a linear probe (fine-tuning has no separate classifier fit)
        res.update(probe_lr=probe["classifier"]["lr"],
                   between_video_cosine=probe.get("between_video_cosine"),  # absent from probes before it existed
                   knn_top1=probe.get("knn_top1"), retrieval_recall=probe.get("retrieval_recall"))  # likewise
    if job.row.kind != "random":
        log = read_log(job.dir / "log.jsonl")
        losses = [r for r in log if "loss" in r]
        res["curve"] = [[r["step"], round(r["loss"], 5)] for r in losses]  # rounded: results.json stays readable
        res["final_loss"] = losses[-1]["loss"] if losses else None
        res["steps"] = losses[-1]["step"] if losses else None
        if losses and "t_entropy" in losses[-1]:  # lss.py: is the teacher's output still uniform (ln K)?
            res["final_teacher_entropy"] = losses[-1]["t_entropy"]
            res["final_teacher_mi"] = losses[-1].get("t_mi")
        zero_shot = [r["zero_shot_top1"] for r in log if "zero_shot_top1" in r]
        if zero_shot:
            res["zero_shot_top1"] = zero_shot[-1]  # lss.py: the teacher's zero-shot top-1 at the end of training
        student_zs = [r["student_zero_shot_top1"] for r in log if "student_zero_shot_top1" in r]
        if student_zs:
            res["student_zero_shot_top1"] = student_zs[-1]
        for key in ("target_acc", "teacher_acc"):  # lss.py: how often the target / the teacher named the true class
            values = [r[key] for r in losses if r.get(key) is not None]
            if values:
                res[key] = round(100 * statistics.fmean(values), 2)
    if job.row.student:
        student = json.loads((job.dir / "student.json").read_text())
        res.update(student_top1=student["top1"], student_knn_top1=student.get("knn_top1"))
    return res


# ----------------------------------------------------------------------------- running the grid

def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)  # atomic: an interrupted write never leaves a half file that a resume would trust


def execute(job: Job, runner, records: dict) -> dict:
    started = read_json(job.dir / "job.json")
    if job.dir.exists() and (started is None or started.get("key") != job.key):
        # different commands (or unknown provenance): a checkpoint there belongs to another run, and cvrl.py would
        # resume from it with a warning only. Start this job afresh.
        why = "no record of the last attempt's commands" if started is None else "the commands changed"
        tqdm.write(f"{job.id}: {why}; emptying {rel(job.dir)} and starting afresh")
        shutil.rmtree(job.dir)
    job.dir.mkdir(parents=True, exist_ok=True)
    write_json(job.dir / "job.json", {"id": job.id, "key": job.key})
    rec = {"row": job.row.name, "seed": job.seed, "key": job.key, "threads": job.threads}
    t = time.perf_counter()
    try:
        if job.needs and records.get(job.needs, {}).get("status") != "ok":
            raise JobFailed(f"needs {job.needs}, which did not succeed")
        rec.update(runner(job), status="ok")
    except JobFailed as e:
        rec.update(status="failed", error=str(e), log_tail=e.tail)
    except Exception as e:  # noqa: BLE001 -- one broken job (e.g. unreadable output) must not stop the grid
        rec.update(status="failed", error=f"{type(e).__name__}: {e}", log_tail="")
    rec["wall_seconds"] = round(time.perf_counter() - t, 1)
    write_json(job.dir / "result.json", rec)
    return rec


def run_grid(jobs: list[Job], runner=run_job, on_update=None, parallel: int = 1) -> dict:
    """Run every job that has no reusable result; returns {job id: record}. on_update(records) after each job.
    parallel > 1: that many jobs at a time, started in grid order, except that a row with a base starts only once
    its base has finished (the next jobs go first meanwhile). KeyboardInterrupt propagates after the running scripts
    have saved their checkpoints (they get the Ctrl-C too); jobs not yet started are not started."""
    records, todo = {}, []
    for job in jobs:
        prev = read_json(job.dir / "result.json")
        if prev and prev.get("status") == "ok" and prev.get("key") == job.key:
            records[job.id] = prev
        else:
            todo.append(job)
    print(f"{len(jobs)} jobs: {len(jobs) - len(todo)} done earlier, {len(todo)} to run"
          + (f", {parallel} at a time" if parallel > 1 else ""))
    t0 = time.perf_counter()
    bar = tqdm(total=len(todo), unit="job", dynamic_ncols=True)
    lock = threading.Lock()  # records, the bar and on_update's files are shared by the pool's threads

    def finish(job, rec):
        with lock:
            records[job.id] = rec
            bar.update(1)
            elapsed, done = time.perf_counter() - t0, bar.n
            eta = elapsed / done * (len(todo) - done)
            what = f"top-1 {rec['top1']:.1f}%" if rec["status"] == "ok" else f"FAILED: {rec['error']}"
            tqdm.write(f"[{done}/{len(todo)}] {job.id}: {what} ({rec['wall_seconds']:.0f} s) | elapsed "
                       f"{hms(elapsed)}, ETA {hms(eta)}")
            if on_update:
                on_update(records)

    if parallel <= 1:
        for job in todo:
            bar.set_description(job.id)
            finish(job, execute(job, runner, records))
    else:
        pending, running = list(todo), {}
        pool = ThreadPoolExecutor(parallel)
        try:
            while pending or running:
                for job in list(pending):  # in grid order, skipping a row until its base has finished
                    if len(running) < parallel and (job.needs is None or job.needs in records):
                        pending.remove(job)
                        running[pool.submit(lambda j=job: finish(j, execute(j, runner, records)))] = job
                if not running:
                    raise RuntimeError(f"jobs wait for bases that are not in the grid: {[j.id for j in pending]}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for f in done:
                    running.pop(f)
                    f.result()  # re-raises what escaped execute(): KeyboardInterrupt
        except KeyboardInterrupt:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown()
    bar.close()
    return records


def hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


# ----------------------------------------------------------------------------- aggregation and the table

def aggregate(values) -> dict:
    """Mean and sample standard deviation (ddof=1: the seeds are a sample of all seeds) of a row's per-seed values.
    One value has no std: None in the JSON, shown without ± in the table. None values (missing) are dropped."""
    v = [float(x) for x in values if x is not None]
    return {"mean": statistics.fmean(v) if v else None, "std": statistics.stdev(v) if len(v) > 1 else None,
            "n": len(v)}


def summarize(rows: list[Row], jobs: list[Job], records: dict) -> list[dict]:
    """Per row: its description, the aggregates over its successful seeds, and how many seeds failed."""
    out = []
    for row in rows:
        recs = [records[j.id] for j in jobs if j.row.name == row.name and j.id in records]
        ok = [r for r in recs if r["status"] == "ok"]
        out.append({"name": row.name, "label": row.label, "kind": row.kind, "groups": list(row.groups),
                    "ref": row.ref, "seeds": sorted(r["seed"] for r in ok),
                    "failed": sorted(r["seed"] for r in recs if r["status"] != "ok"),
                    "top1": aggregate(r["top1"] for r in ok), "top5": aggregate(r["top5"] for r in ok),
                    "final_loss": aggregate(r.get("final_loss") for r in ok),
                    "knn_top1": aggregate(r.get("knn_top1") for r in ok),
                    "zero_shot_top1": aggregate(r.get("zero_shot_top1") for r in ok),
                    **{k: aggregate(r.get(k) for r in ok) for k in ("student_top1", "student_zero_shot_top1",
                                                                     "target_acc", "teacher_acc")},
                    "final_teacher_entropy": aggregate(r.get("final_teacher_entropy") for r in ok),
                    "wall_seconds": aggregate(r["wall_seconds"] for r in ok)})
    return out


def format_cell(s: dict) -> str:
    a, failed = s["top1"], len(s["failed"])
    if a["n"] == 0:
        return f"**failed** ({plural(failed, 'seed')})" if failed else "not run"
    seeds = plural(a["n"], "seed") + (f", **{failed} failed**" if failed else "")
    return f"{a['mean']:.1f} ± {a['std']:.1f} ({seeds})" if a["std"] is not None else f"{a['mean']:.1f} ({seeds})"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def format_delta(s: dict, by_name: dict) -> str:
    ref = by_name.get(s["ref"])
    if ref is None or s["top1"]["n"] == 0 or ref["top1"]["n"] == 0:
        return "—"
    return f"{s['top1']['mean'] - ref['top1']['mean']:+.1f}"


def format_extra(a: dict | None) -> str:
    if not a or a["n"] == 0:
        return "—"
    return f"{a['mean']:.1f} ± {a['std']:.1f}" if a["std"] is not None else f"{a['mean']:.1f}"


# columns shown when any row has them: (summary key, header)
EXTRA_COLUMNS = [("zero_shot_top1", "zero-shot top-1 % (LSS teacher, end)"), ("knn_top1", "k-NN top-1 %"),
                 ("student_top1", "student: top-1 %"), ("student_zero_shot_top1", "student: zero-shot top-1 %"),
                 ("target_acc", "target right % (training)")]


def format_table(summary: list[dict]) -> str:
    """Markdown: one section per claim (GROUPS order), one line per row; a row may appear in several sections."""
    by_name = {s["name"]: s for s in summary}
    extra = [(k, h) for k, h in EXTRA_COLUMNS if any((s.get(k) or {}).get("n") for s in summary)]
    lines = ["| | top-1 % (mean ± std, seeds) | Δ vs baseline |" + "".join(f" {h} |" for _, h in extra),
             "|---|---|---|" + "---|" * len(extra)]
    for group, title in GROUPS.items():
        members = [s for s in summary if group in s["groups"]]
        if any(s["groups"][0] == group for s in members):  # not a section of anchors only (a partial grid)
            lines.append(f"| **{title}** | | |" + " |" * len(extra))
            lines += [f"| {s['label']} | {format_cell(s)} | {format_delta(s, by_name)} |"
                      + "".join(f" {format_extra(s.get(k))} |" for k, _ in extra) for s in members]
    lines.append("")
    lines.append("Top-1: linear probe on frozen features (eval_linear.py), % of test videos; mean ± sample std "
                 "(ddof=1) over seeds, a single seed has no std. Δ: the row's mean minus the mean of its "
                 "baseline row (—): for CVRL the random-init encoder (nuisance rows: at the same nuisance level), "
                 "for LSS from random weights the LSS network at init, for LSS from the pretrained CLIP the frozen "
                 "CLIP it starts from, for fine-tuning the same network trained from scratch."
                 + (" Zero-shot: the LSS teacher's top-1 by class names at the end of training (lss.py; the frozen "
                    "rows: at step 0). k-NN: DINO's weighted 20-NN on the same frozen features."
                    if extra else "")
                 + (" Student: the same for LSS's student network (the teacher is its moving average). Target "
                    "right: how often the target the student learnt from (the teacher's, or the truth for the "
                    "oracle's videos) named the true class, over the training steps."
                    if any(k == "student_top1" for k, _ in extra) else ""))
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- plots (optional: matplotlib)

# one entry per kind of row (SCRIPTS' keys and "random"); tests/test_replicate.py checks that none is missing
COLORS = {"cvrl": "tab:blue", "lss": "tab:orange", "supervised": "tab:green", "random": "tab:gray",
          "lss_start": "tab:purple", "finetune": "tab:red"}
CURVE_TITLES = {"cvrl": "CVRL: NT-Xent (sum of both directions)", "lss": "LSS: total loss",
                "supervised": "supervised: cross-entropy", "lss_start": "LSS start: NT-Xent (scripts/lss_start.py)",
                "finetune": "fine-tuning: cross-entropy (scripts/finetune.py)"}


def mean_curve(curves: list) -> tuple[list, list]:
    """Mean over seeds at the steps every seed logged."""
    steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
    maps = [dict(map(tuple, c)) for c in curves]
    return steps, [statistics.fmean(m[s] for m in maps) for s in steps]


def make_plots(summary: list[dict], jobs: list[Job], records: dict, out: Path, beside=()) -> list[Path]:
    """curves.png (training loss vs step, mean over seeds, one panel per kind), bars.png (top-1 mean ± std per
    row) and, for the LSS controls, target_quality.png (gain over the frozen CLIP against target quality, this grid's
    rows with those of `beside`, another grid's per-job records). Agg backend, matplotlib's default style and no
    metadata: the same numbers give the same bytes."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed, so no plots (curves.png, bars.png); "
              "pip install -e \".[study]\" and re-run the same command (finished jobs are not re-run)")
        return []
    written = []
    with plt.style.context("default"):
        kinds = [k for k in CURVE_TITLES if any(s["kind"] == k and s["seeds"] for s in summary)]
        if kinds:
            fig, axes = plt.subplots(1, len(kinds), figsize=(6 * len(kinds), 4.5), squeeze=False)
            for ax, kind in zip(axes[0], kinds):
                rows = [s for s in summary if s["kind"] == kind and s["seeds"]]
                cmap = plt.get_cmap("tab20")
                for i, s in enumerate(rows):
                    curves = [records[j.id]["curve"] for j in jobs if j.row.name == s["name"] and j.id in records
                              and records[j.id]["status"] == "ok" and records[j.id].get("curve")]
                    if curves:
                        steps, loss = mean_curve(curves)
                        ax.plot(steps, loss, color=cmap(i % 20), lw=1.2, label=f"{s['label']} ({len(curves)})")
                ax.set_title(CURVE_TITLES[kind], fontsize=10)
                ax.set_xlabel("step")
                ax.set_ylabel("training loss, mean over seeds")
                ax.legend(fontsize=6)
            fig.tight_layout()
            written.append(out / "curves.png")
            fig.savefig(written[-1], dpi=100, metadata={"Software": None})
            plt.close(fig)
        rows = [s for s in summary if s["top1"]["n"]]
        if rows:
            fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.3))
            y = list(range(len(rows)))
            ax.barh(y, [s["top1"]["mean"] for s in rows], xerr=[s["top1"]["std"] or 0.0 for s in rows],
                    color=[COLORS[s["kind"]] for s in rows], capsize=2)
            ax.set_yticks(y, [f"{s['label']} ({s['top1']['n']})" for s in rows], fontsize=7)
            ax.invert_yaxis()
            base = next((s for s in rows if s["name"] == "random-init"), None)
            if base:
                ax.axvline(base["top1"]["mean"], color="k", ls="--", lw=1, label="random-init encoder")
                ax.legend(fontsize=7, loc="lower right")
            ax.set_xlabel("linear-probe top-1 (%), mean ± std over seeds (n)")
            fig.tight_layout()
            written.append(out / "bars.png")
            fig.savefig(written[-1], dpi=100, metadata={"Software": None})
            plt.close(fig)
        points = target_quality_points([*beside, *(records[j.id] for j in jobs if j.id in records)])
        if len({p[0] for p in points}) >= 2:  # at least two rows: a curve, not a point
            fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
            # two curves, LSS then truer targets: lss.py's loss (distillation alone) and the full loss
            labels_of = {r.name: r.label for r in build_rows()}
            sweeps = [{labels_of[n] for n in names} for names in (
                ("lss-pre", "lss-oracle"),
                ("lss-pre-full", "lss-oracle-full", *(f"lss-oracle{round(f * 100)}" for f in ORACLE_FRACTIONS)))]
            for ax, i, what in ((axes[0], 2, "linear probe"), (axes[1], 3, "zero-shot")):
                for n, label in enumerate(dict.fromkeys(p[0] for p in points)):  # rows, in grid order
                    mine = [p for p in points if p[0] == label]
                    ax.scatter([p[1] for p in mine], [p[i] for p in mine], color=f"C{n}", s=18, label=label)
                for sweep, ls in zip(sweeps, ("-", "--")):
                    means = [(statistics.fmean(p[1] for p in points if p[0] == lab),  # each row's mean over seeds
                              statistics.fmean(p[i] for p in points if p[0] == lab))
                             for lab in dict.fromkeys(p[0] for p in points) if lab in sweep]
                    if len(means) >= 2:  # the curve through the sweep's means (the ablations are points beside it)
                        ax.plot(*zip(*sorted(means)), color="grey", lw=1, ls=ls, zorder=0)
                ax.axhline(0, color="k", lw=0.8, ls="--")
                ax.set(xlabel="target right % (training views; the teacher's, or the truth)",
                       ylabel="student top-1 minus the frozen CLIP's (points)", title=what)
            handles, labels = axes[0].get_legend_handles_labels()
            fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=3, frameon=False)
            fig.suptitle("LSS gain over the frozen CLIP against the quality of its targets (one point per seed)\n"
                         "lines through the rows' means: solid lss.py's loss (distillation), dashed the full loss",
                         fontsize=10)
            fig.tight_layout(rect=(0, 0.12, 1, 1))  # the legend below the panels
            written.append(out / "target_quality.png")
            fig.savefig(written[-1], dpi=100, metadata={"Software": None})
            plt.close(fig)
    return written


def target_quality_points(records: list[dict]) -> list[tuple]:
    """(row label, target right %, student probe gain, student zero-shot gain), one per seed of every LSS row that
    logged its targets' accuracy (LSS itself and the oracle controls), each against its frozen start of the same
    seed (the same grid's). records: per-job records (results.json's "jobs"), of one grid or several."""
    rows = {r.name: r for r in build_rows()}
    ok = {(r["row"], r["seed"]): r for r in records if r.get("status") == "ok"}
    points = []
    for (name, seed), rec in ok.items():
        ref = ok.get((rows[name].ref, seed)) if name in rows else None
        if ref and rec.get("target_acc") is not None and rec.get("student_top1") is not None:
            points.append((rows[name].label, rec["target_acc"], rec["student_top1"] - ref["top1"],
                           rec["student_zero_shot_top1"] - ref["zero_shot_top1"]))
    return sorted(points, key=lambda p: p[1])  # by target quality: the legend reads from LSS to the oracle


# ----------------------------------------------------------------------------- environment and README

def environment(argv: list) -> dict:
    import torch
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        # code that differs from the commit makes the commit a false label: say so (results/ is written by this run)
        if commit and subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "*.py", "pyproject.toml", "*.json",
                                      ":!results"], cwd=ROOT, timeout=10).returncode:
            commit += "+uncommitted changes"
    except (OSError, subprocess.SubprocessError):
        commit = ""
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name(0)
    else:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
                   platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
        device = f"CPU only: {cpu or 'unknown'}, {len(os.sched_getaffinity(0))} cores"
    return {"date": datetime.date.today().isoformat(), "device": device, "torch": torch.__version__,
            "python": platform.python_version(), "git": commit,
            "command": " ".join(["python", "scripts/replicate.py", *argv])}


def wall_clock(invocations: list) -> str:
    """'1:10:03' for one timed invocation; the sum and the count for a resumed grid; says so when one was not timed."""
    timed = [i["elapsed_seconds"] for i in invocations if i.get("elapsed_seconds") is not None]
    text = hms(sum(timed)) + (f" over {len(invocations)} invocations" if len(invocations) > 1 else "")
    return text + (" (one or more not timed)" if len(timed) < len(invocations) else "")


def readme_block(table: str, env: dict, out: Path, plots: list, invocations: list, base: Path = ROOT) -> str:
    """The results block; its links are relative to `base`, the folder of the file it goes into."""
    link = lambda p: os.path.relpath(Path(p).resolve(), Path(base).resolve())  # noqa: E731
    where = link(out)
    lines = [README_BEGIN,
             "<!-- written by scripts/replicate.py --update-readme: edit the script, not this block -->",
             f"`{env['command']}` (commit {env['git'] or '?'}, {env['date']}; {env['device']}; torch {env['torch']}, "
             f"Python {env['python']}; wall-clock {wall_clock(invocations)}). Per-job numbers: "
             f"[{where}/results.json]({where}/results.json).", "", table.rstrip("\n"), ""]
    lines += [f"![{p.stem}]({link(p)})" for p in plots]
    return "\n".join(lines + [README_END]) + "\n"


def update_readme(readme: Path, block: str) -> bool:
    """Replace the marked block of the file; False (and nothing written) when the markers are not there."""
    text = readme.read_text() if readme.exists() else ""
    pattern = re.compile(re.escape(README_BEGIN) + r".*?" + re.escape(README_END) + r"\n?", re.S)
    if not pattern.search(text):
        return False
    readme.write_text(pattern.sub(lambda _: block, text, count=1))
    return True


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", choices=["auto", *PRESETS], default="auto",
                   help="auto: full with a GPU, quick without")
    p.add_argument("--quick", action="store_true", help="same as --preset quick")
    p.add_argument("--rows", default=None, help="comma-separated row names to run (default: the preset's)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="override the preset's seeds")
    p.add_argument("--parallel", type=int, default=None,
                   help="jobs at a time (default: the preset's; quick: 2, each with half the cores' threads)")
    p.add_argument("--out", default=None, help="default: results/replicate/<preset>[-<dataset>]")
    p.add_argument("--dataset", default=None, choices=["synthetic", "folder", "ucf101", "hmdb51", "kinetics"],
                   help="passed to every job (default: the scripts' own, synthetic)")
    p.add_argument("--data", default=None, help="passed to every job")
    p.add_argument("--annotations", default=None, help="passed to every job")
    p.add_argument("--fold", type=int, default=None, choices=[1, 2, 3], help="passed to every job")
    p.add_argument("--update-readme", action="store_true",
                   help=f"rewrite the block between {README_BEGIN} and {README_END} in --readme")
    p.add_argument("--readme", default=str(ROOT / "docs" / "results.md"),
                   help="the file whose marked block --update-readme rewrites (the study's narrative lives there)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--dry-run", action="store_true", help="print every job's commands and exit")
    p.add_argument("--report", action="store_true",
                   help="run nothing: write the table, results.json and plots from the jobs finished so far (a grid "
                        "whose rows ran with different seeds, or one still running elsewhere)")
    a = p.parse_args(argv)
    if a.quick:
        a.preset = "quick"
    if a.preset == "auto":
        import torch
        a.preset = "full" if torch.cuda.is_available() else "quick"
    return a


def main(argv=None, runner=run_job) -> int:
    a = parse_args(argv)
    P = dict(PRESETS[a.preset])
    if a.seeds:
        P["seeds"] = a.seeds
    data_flags = [x for flag, v in [("--dataset", a.dataset), ("--data", a.data and os.path.abspath(a.data)),
                                    ("--annotations", a.annotations and os.path.abspath(a.annotations)),
                                    ("--fold", a.fold)] if v is not None for x in (flag, str(v))]
    levels = P["nuisance"]
    if (a.dataset not in (None, "synthetic") or a.data) and any(levels):
        # --nuisance only changes the videos that data.py generates into its cache; a given root is used as it is
        print("note: the nuisance rows need the built-in synthetic videos (no --data, no other --dataset); skipped")
        levels = [0.0]
    rows = preset_rows(P, levels, a.rows.split(",") if a.rows else None)
    out = Path(a.out or ROOT / "results" / "replicate" / (
        a.preset + (f"-{a.dataset}" if a.dataset not in (None, "synthetic") else ""))).resolve()
    jobs = make_jobs(rows, P, out, data_flags)
    parallel = max(1, a.parallel or P.get("parallel", 1))
    if parallel > 1:
        # on 2 CPU cores two 1-thread jobs side by side did 1.46x the work of one 2-thread job (training) and 1.57x
        # (probe): small convolutions do not use 2 threads well. The thread count changes summation order only.
        for job in jobs:
            job.threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    print(f"replication study | preset {a.preset} | {len(rows)} rows x {len(P['seeds'])} seeds | {rel(out)}"
          + (f" | {parallel} jobs at a time, {jobs[0].threads} thread(s) each" if parallel > 1 and jobs else ""))
    if a.dry_run:
        for job in jobs:
            print(f"# {job.id}" + (f" (after {job.needs})" if job.needs else ""))
            for cmd in job.cmds:
                print("python " + " ".join(cmd))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    env = environment(sys.argv[1:] if argv is None else list(argv))
    # wall-clock of every invocation that worked on this grid (a resumed grid has several): with jobs side by side,
    # the sum of the jobs' times is not the time the grid took
    previous = read_json(out / "results.json") or {}
    invocations = list(previous.get("invocations", []))
    if previous.get("jobs") and "invocations" not in previous:
        invocations.append({"elapsed_seconds": None, "note": "earlier invocation(s) not timed (older script)"})
    this = {"date": env["date"], "parallel": parallel, "elapsed_seconds": 0.0}
    if not a.report:  # a report runs nothing: it adds no time to the grid's
        invocations.append(this)
    t_start = time.perf_counter()

    def write_results(records):
        summary = summarize(rows, jobs, records)
        this["elapsed_seconds"] = round(time.perf_counter() - t_start, 1)
        write_json(out / "results.json", {"preset": a.preset, "seeds": P["seeds"], "environment": env,
                                          "invocations": invocations, "rows": summary,
                                          "jobs": [records[j.id] for j in jobs if j.id in records]})
        (out / "table.md").write_text(format_table(summary))
        return summary

    try:
        if a.report:  # the finished jobs only (the same test of a reusable result as run_grid's)
            records = {j.id: prev for j in jobs if (prev := read_json(j.dir / "result.json"))
                       and prev.get("status") == "ok" and prev.get("key") == j.key}
            print(f"report: {len(records)} of {len(jobs)} jobs finished; nothing is run")
        else:
            records = run_grid(jobs, runner, on_update=write_results, parallel=parallel)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished jobs are saved in {rel(out)}; run the same command to resume")
        return 130
    summary = write_results(records)
    table = (out / "table.md").read_text()
    beside = (read_json(out.parent / P["beside"] / "results.json") or {}).get("jobs", []) if P.get("beside") else []
    plots = [] if a.no_plots else make_plots(summary, jobs, records, out, beside)
    print("\n" + table)
    print(f"wrote {rel(out / 'results.json')}, {rel(out / 'table.md')}" + "".join(f", {rel(p)}" for p in plots))
    if a.update_readme:
        block = readme_block(table, env, out, plots, invocations, base=Path(a.readme).resolve().parent)
        if update_readme(Path(a.readme), block):
            print(f"updated the results block of {a.readme}")
        else:
            print(f"{a.readme} has no {README_BEGIN} ... {README_END} markers; paste this block where the results "
                  f"belong:\n\n{block}")
    failed = [j.id for j in jobs if j.id in records and records[j.id]["status"] != "ok"]
    if failed:
        print(f"{len(failed)} job(s) failed: {', '.join(failed)} (errors and log tails in "
              f"{rel(out / 'results.json')}; re-run the same command to retry them)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
