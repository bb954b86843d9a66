"""lss.py model half: CLIP vs open_clip, tokenizer vs open_clip, video ViT at init, concept spaces, losses."""

import copy
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

import open_clip  # the reference CLIP (test extra)

import lss

# heads = width // 64, the rule load_clip (like OpenAI's build_model) uses to infer them from a state dict
TINY = lss.CLIPConfig(embed_dim=32, image_resolution=32, vision_layers=2, vision_width=128, vision_patch_size=8,
                      vision_heads=2, context_length=77, vocab_size=49408, text_width=64, text_heads=1, text_layers=2)


@pytest.fixture(scope="module")
def tiny_clip():
    torch.manual_seed(0)
    return lss.CLIP(TINY).eval()


def _outputs(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(2, 3, TINY.image_resolution, TINY.image_resolution, generator=g)
    text = lss.tokenize(["a person riding a horse", "juggling!"])
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


# ----------------------------------------------------------------------------- CLIP loading

def test_load_clip_matches_open_clip(tmp_path):
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None).eval()  # random weights, no download
    path = tmp_path / "vitb16.pt"
    torch.save(ref.state_dict(), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no missing/unexpected-key warning may be raised
        model = lss.load_clip(str(path)).eval()
    assert model.cfg == lss.CLIPConfig()  # ViT-B/16 inferred from shapes
    assert set(model.state_dict()) == set(ref.state_dict())  # exactly OpenAI's key layout
    image = torch.randn(2, 3, 224, 224)
    texts = ["a photo of a person playing guitar.", "don't stop", "", "Zürich 2023 🎸"]
    with torch.no_grad():
        assert (model.encode_image(image) - ref.encode_image(image)).abs().max() < 1e-4
        text = lss.tokenize(texts)
        assert (model.encode_text(text) - ref.encode_text(text)).abs().max() < 1e-4


def test_load_clip_plain_wrapped_fp16_and_jit(tiny_clip, tmp_path):
    want = _outputs(tiny_clip)
    sd = tiny_clip.state_dict()
    # OpenAI-style file: fp16 tensors plus the three int entries build_model deletes
    openai_style = {k: v.half() for k, v in sd.items()}
    openai_style.update(input_resolution=torch.tensor(32), context_length=torch.tensor(77),
                        vocab_size=torch.tensor(49408))
    cases = {"plain": sd, "state_dict": {"state_dict": sd}, "model": {"model": sd, "epoch": 3},
             "ddp_prefix": {"module." + k: v for k, v in sd.items()}, "fp16": openai_style}
    for name, obj in cases.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            model = lss.load_clip(str(tmp_path / f"{name}.pt")).eval()
        assert model.cfg == TINY, name
        assert all(p.dtype == torch.float32 for p in model.parameters()), name
        atol = 1e-2 if name == "fp16" else 0
        for a, b in zip(_outputs(model), want):
            torch.testing.assert_close(a, b, atol=atol, rtol=atol)
    # TorchScript archive (the format of OpenAI's ViT-B-16.pt): trace our own CLIP and save it
    image = torch.randn(1, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(tiny_clip, (image, lss.tokenize(["a cat"])), check_trace=False)
    traced.save(str(tmp_path / "jit.pt"))
    model = lss.load_clip(str(tmp_path / "jit.pt")).eval()
    for a, b in zip(_outputs(model), want):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_load_clip_reports_and_refuses(tiny_clip, tmp_path):
    sd = dict(tiny_clip.state_dict())
    del sd["ln_final.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pt")
    with pytest.warns(UserWarning, match=r"ln_final\.bias.*extra\.weight"):
        lss.load_clip(str(tmp_path / "partial.pt"))
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "notclip.pt")
    with pytest.raises(ValueError, match="notclip.pt"):
        lss.load_clip(str(tmp_path / "notclip.pt"))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        lss.load_clip(str(tmp_path / "nope.pt"))


class _Evil:
    """A pickle that creates a file when unpickled: weights_only must refuse it before running anything."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_load_clip_refuses_code_in_pickle(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"visual.conv1.weight": torch.zeros(1), "x": _Evil(str(marker))}, tmp_path / "evil.pt")
    with pytest.raises(RuntimeError, match="weights_only"):
        lss.load_clip(str(tmp_path / "evil.pt"))
    assert not marker.exists()


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_matches_open_clip():
    texts = [
        "a photo of a cat.", "Hello, World!!! ... ?!", "don't, it's, we're, I've, I'm, you'll, he'd",
        "café naïve résumé Ångström", "北京 東京 서울", "emoji 🎉🔥👍🏽 and ❤️", "numbers 12345 3.14 1,000,000 2nd",
        "fish &amp; chips &amp;amp; &lt;b&gt; &#39;quoted&#39;", "  multiple   spaces\n\nnew\tlines  ",
        "", "ApplyEyeMakeup brush_hair", "(parentheses) [brackets] {braces} @user #tag $5 100%",
        "word " * 100,  # too long: truncated
    ]
    ref = open_clip.get_tokenizer("ViT-B-16")(texts)
    ours = lss.tokenize(texts)
    assert ours.dtype == torch.long and ours.shape == (len(texts), 77)
    assert torch.equal(ours, ref)
    assert ours[9, 0] == lss.SOT and ours[9, 1] == lss.EOT and (ours[9, 2:] == 0).all()  # empty string
    assert ours[-1, -1] == lss.EOT and ours[-1].argmax() == 76  # truncated: last token EOT, EOT pooling finds it
    assert torch.equal(lss.tokenize("a cat"), lss.tokenize(["a cat"]))


def test_find_bpe_vocab(tmp_path):
    assert lss.find_bpe_vocab().endswith(lss.BPE_FILE)
    with pytest.raises(FileNotFoundError, match="missing.gz"):
        lss.find_bpe_vocab(str(tmp_path / "missing.gz"))


# ----------------------------------------------------------------------------- video backbone

def test_video_vit_loads_clip_keys(tiny_clip):
    video = lss.VideoViT(32, 8, 128, 2, 2, 32)
    missing, unexpected = video.load_state_dict(tiny_clip.visual.state_dict(), strict=False)
    assert not unexpected
    assert set(missing) == {"time_embed"} | {f"transformer.resblocks.{i}.temporal_{n}" for i in range(2) for n in
                                              ("ln.weight", "ln.bias", "attn.in_proj_weight", "attn.in_proj_bias",
                                               "attn.out_proj.weight", "attn.out_proj.bias", "fc.weight", "fc.bias")}


def test_video_vit_per_frame_equals_frame_mean_clip(tiny_clip):
    torch.manual_seed(0)
    video = lss.VideoViT.from_clip(tiny_clip.visual, cls_mode="per_frame").eval()
    x = torch.randn(2, 4, 3, 32, 32)  # (B, T, C, H, W), all frames different
    with torch.no_grad():
        want = torch.stack([tiny_clip.encode_image(x[:, t]) for t in range(4)], 1).mean(1)
        torch.testing.assert_close(video(x), want, atol=1e-5, rtol=0)
        # the linear-probe feature is the pre-projection one
        cls = video.features(x, "cls")
        assert cls.shape == (2, 128)
        torch.testing.assert_close(cls @ video.proj, want, atol=1e-5, rtol=0)


def test_video_vit_shared_equals_clip_on_identical_frames(tiny_clip):
    video = lss.VideoViT.from_clip(tiny_clip.visual, cls_mode="shared").eval()
    frame = torch.randn(2, 3, 32, 32)
    x = frame[:, None].expand(2, 5, 3, 32, 32)  # T = 5 copies (also != num_frames: time_embed resized)
    with torch.no_grad():
        torch.testing.assert_close(video(x), tiny_clip.encode_image(frame), atol=1e-5, rtol=0)


def test_video_vit_temporal_branch_is_wired(tiny_clip):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 32, 32)
    for mode in ("per_frame", "shared"):
        video = lss.VideoViT.from_clip(tiny_clip.visual, cls_mode=mode).eval()
        with torch.no_grad():
            before = video(x)
            nn.init.normal_(video.transformer.resblocks[0].temporal_fc.weight, std=0.1)
            after = video(x)
        assert (after - before).abs().max() > 1e-3, mode
    # at init the zero temporal_fc still receives gradient, so the temporal branch can start learning
    video = lss.VideoViT.from_clip(tiny_clip.visual)
    video(x).square().sum().backward()
    assert video.transformer.resblocks[1].temporal_fc.weight.grad.abs().sum() > 0


def test_video_vit_other_resolution_and_length(tiny_clip):
    for mode in ("per_frame", "shared"):
        video = lss.VideoViT.from_clip(tiny_clip.visual, cls_mode=mode, num_frames=8, drop_path=0.1)
        nn.init.normal_(video.time_embed, std=0.1)
        for T, R in [(3, 16), (8, 32), (2, 24)]:  # 16 px: 2x2 patch grid instead of 4x4; T != 8
            out = video(torch.randn(2, T, 3, R, R))
            assert out.shape == (2, 32) and torch.isfinite(out).all()
    # a single-frame 16 px clip at init = image CLIP with its positional grid resized the same way
    video = lss.VideoViT.from_clip(tiny_clip.visual).eval()
    img = torch.randn(2, 3, 16, 16)
    small = copy.deepcopy(tiny_clip.visual)
    small.positional_embedding = nn.Parameter(lss.resize_pos_embed(small.positional_embedding.data, 2))
    with torch.no_grad():
        torch.testing.assert_close(video(img[:, None]), small(img), atol=1e-5, rtol=0)


# The embedding resizes are gathers with indices computed in Python; these are the F.interpolate calls they replace.
def _interpolate_pos_embed(pos, grid):
    g = round((pos.shape[0] - 1) ** 0.5)
    patch_pos = rearrange(pos[1:], "(h w) d -> 1 d h w", h=g)  # (1, D, g, g)
    patch_pos = F.interpolate(patch_pos, size=(grid, grid), mode="nearest")  # (1, D, grid, grid)
    return torch.cat([pos[:1], rearrange(patch_pos, "1 d h w -> (h w) d")], dim=0)  # (1+grid*grid, D)


def _interpolate_time_embed(time, T):
    return rearrange(F.interpolate(rearrange(time, "1 t d -> 1 d t"), size=T, mode="nearest"), "1 d t -> 1 t d")


def test_nearest_indices_are_interpolate_nearest():
    for n_in in range(1, 41):
        src = torch.arange(n_in, dtype=torch.float64).view(1, 1, n_in)
        for n_out in range(1, 41):
            want = F.interpolate(src, size=n_out, mode="nearest").view(-1).long().tolist()
            assert lss.nearest_indices(n_in, n_out) == want, (n_in, n_out)


def test_embedding_resizes_equal_interpolate():
    """Bit-identical values, down- and up-sampling. The gradient too where no source repeats (downsampling, as for
    local views); where one does, the repeats' gradients are summed in an order neither op promises: close."""
    torch.manual_seed(0)
    for g, grid in [(4, 2), (4, 3), (14, 6), (7, 5), (4, 6), (2, 5), (7, 12), (3, 3)]:
        pos = torch.randn(1 + g * g, 16, requires_grad=True)
        got, want = lss.resize_pos_embed(pos, grid), _interpolate_pos_embed(pos, grid)
        assert got.shape == (1 + grid * grid, 16) and torch.equal(got, want), (g, grid)
        up = torch.randn_like(got)
        (g_got,), (g_want,) = torch.autograd.grad(got, pos, up), torch.autograd.grad(want, pos, up)
        assert torch.equal(g_got, g_want) if grid <= g else torch.allclose(g_got, g_want), (g, grid)
    for T0, T in [(8, 4), (8, 3), (4, 2), (5, 4), (4, 8), (3, 7), (8, 8)]:
        time = torch.randn(1, T0, 16, requires_grad=True)
        got, want = lss.resize_time_embed(time, T), _interpolate_time_embed(time, T)
        assert got.shape == (1, T, 16) and torch.equal(got, want), (T0, T)
        up = torch.randn_like(got)
        (g_got,), (g_want,) = torch.autograd.grad(got, time, up), torch.autograd.grad(want, time, up)
        assert torch.equal(g_got, g_want) if T <= T0 else torch.allclose(g_got, g_want), (T0, T)


def test_video_vit_traces_without_graph_breaks():
    """torch.compile captures the student's forward as one graph: the MultiView pass over a global view and a smaller
    local view with fewer frames (both embeddings resized), in train mode with stochastic depth. One trace covers
    both view shapes: lss.py compiles the ViT itself, whose forward this trace inlines once per shape."""
    torch.manual_seed(0)
    vit = lss.VideoViT(32, 8, 64, 1, 1, 16, num_frames=4, drop_path=0.1).train()
    views = [torch.randn(2, 4, 3, 32, 32), torch.randn(4, 2, 3, 16, 16)]  # (B, T, C, H, W): global, local
    torch._dynamo.reset()
    try:
        e = torch._dynamo.explain(lss.MultiView(vit))(views)  # traces only: no compiler needed
    finally:
        torch._dynamo.reset()
    assert (e.graph_count, e.graph_break_count) == (1, 0), e.break_reasons


# ----------------------------------------------------------------------------- concept spaces

def test_class_to_text_and_templates():
    assert lss.class_to_text("ApplyEyeMakeup") == "apply eye makeup"
    assert lss.class_to_text("brush_hair") == "brush hair"
    assert lss.class_to_text("YoYo") == "yo yo"
    assert lss.class_to_text("playing guitar") == "playing guitar"
    # openai/CLIP data/prompts.md, Kinetics700 section, verbatim and in order
    assert lss.KINETICS_TEMPLATES == [
        "a photo of {}.",
        "a photo of a person {}.",
        "a photo of a person using {}.",
        "a photo of a person doing {}.",
        "a photo of a person during {}.",
        "a photo of a person performing {}.",
        "a photo of a person practicing {}.",
        "a video of {}.",
        "a video of a person {}.",
        "a video of a person using {}.",
        "a video of a person doing {}.",
        "a video of a person during {}.",
        "a video of a person performing {}.",
        "a video of a person practicing {}.",
        "a example of {}.",
        "a example of a person {}.",
        "a example of a person using {}.",
        "a example of a person doing {}.",
        "a example of a person during {}.",
        "a example of a person performing {}.",
        "a example of a person practicing {}.",
        "a demonstration of {}.",
        "a demonstration of a person {}.",
        "a demonstration of a person using {}.",
        "a demonstration of a person doing {}.",
        "a demonstration of a person during {}.",
        "a demonstration of a person performing {}.",
        "a demonstration of a person practicing {}.",
    ]


def test_concept_space(tiny_clip):
    classes = ["ApplyEyeMakeup", "brush_hair", "playing guitar"]
    C = lss.build_concept_space(tiny_clip, classes, lss.KINETICS_TEMPLATES, batch_size=7)
    assert C.shape == (3, 32) and C.requires_grad is False and C.grad_fn is None
    torch.testing.assert_close(C.norm(dim=-1), torch.ones(3))
    assert torch.equal(C, lss.build_concept_space(tiny_clip, classes, lss.KINETICS_TEMPLATES, batch_size=7))
    # the text batch size only changes float rounding
    torch.testing.assert_close(C, lss.build_concept_space(tiny_clip, classes, lss.KINETICS_TEMPLATES))
    # single template: exactly the normalised text feature of that one prompt
    C1 = lss.build_concept_space(tiny_clip, classes, ["a video of a person {}."])
    with torch.no_grad():
        want = F.normalize(tiny_clip.encode_text(lss.tokenize(["a video of a person apply eye makeup."])), dim=-1)
    torch.testing.assert_close(C1[:1], want)


def test_description_space(tiny_clip):
    desc = {"a": ["one", "two"], "b": ["three"], "c": ["four", "five", "six"]}
    D, assign = lss.build_description_space(tiny_clip, desc, ["a", "b", "c"])
    assert D.shape == (6, 32) and assign.tolist() == [0, 0, 1, 2, 2, 2]
    torch.testing.assert_close(D.norm(dim=-1), torch.ones(6))
    with pytest.raises(ValueError, match="d"):
        lss.build_description_space(tiny_clip, desc, ["a", "d"])


# ----------------------------------------------------------------------------- losses

def test_distillation_one_hot_teacher_is_cross_entropy():
    torch.manual_seed(0)
    B, K = 4, 6
    teacher = [torch.randn(B, K) for _ in range(2)]
    student = [torch.randn(B, K) for _ in range(3)]
    loss = lss.concept_distillation_loss(lss.teacher_probs(teacher, torch.zeros(K), 1e-4), student, tau_s=0.1)
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]  # (teacher view, student view), same view skipped
    want = sum(F.cross_entropy(student[v] / 0.1, teacher[i].argmax(-1)) for i, v in pairs) / len(pairs)
    torch.testing.assert_close(loss, want)


def test_distillation_hand_computed_pairs():
    ln = math.log
    teacher = [torch.tensor([[0.0, ln(3)]]), torch.tensor([[0.0, 0.0]])]  # P_t = [1/4, 3/4], [1/2, 1/2]
    student = [torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, ln(3)]])]  # P_s = [1/2, 1/2], [1/4, 3/4]
    loss = lss.concept_distillation_loss(lss.teacher_probs(teacher, torch.zeros(2), 1.0), student, tau_s=1.0)
    # only (t0, s1) and (t1, s0): H([1/4,3/4], [1/4,3/4]) and H([1/2,1/2], [1/2,1/2])
    want = (-(0.25 * ln(0.25) + 0.75 * ln(0.75)) + ln(2)) / 2
    assert abs(loss.item() - want) < 1e-6
    # centring shifts the teacher: c = [0, ln 3] gives P_t^0 = [1/2, 1/2], P_t^1 = softmax([0, -ln 3]) = [3/4, 1/4]
    loss_c = lss.concept_distillation_loss(lss.teacher_probs(teacher, torch.tensor([0.0, ln(3)]), 1.0), student, 1.0)
    want_c = (-(0.5 * ln(0.25) + 0.5 * ln(0.75)) + ln(2)) / 2  # H([1/2,1/2],[1/4,3/4]), H([3/4,1/4],[1/2,1/2])
    assert abs(loss_c.item() - want_c) < 1e-6


def test_uniform_prior():
    K = 5
    assert lss.uniform_prior_loss(torch.full((K,), 1 / K)).abs().item() < 1e-6
    p = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1])
    loss = lss.uniform_prior_loss(p)
    assert loss.item() > 0
    torch.testing.assert_close(loss, (torch.full((K,), 1 / K) * (torch.log(torch.tensor(1 / K)) - p.log())).sum())
    # gradient w.r.t. the student's logits vanishes at the uniform distribution
    logits = torch.zeros(3, K, requires_grad=True)
    lss.uniform_prior_loss(lss.mean_student_probs([logits, logits], tau_s=0.1)).backward()
    assert logits.grad.abs().max() < 1e-6
    logits = torch.randn(3, K, requires_grad=True)
    lss.uniform_prior_loss(lss.mean_student_probs([logits], tau_s=0.1)).backward()
    assert logits.grad.abs().max() > 1e-3


def test_alignment_hand_computed():
    ln = math.log
    assign = torch.tensor([0, 0, 1])  # 3 descriptions: two for class 0, one for class 1
    teacher = [torch.tensor([[0.0, ln(3)]]), torch.tensor([[0.0, 0.0]])]  # P_t = [1/4, 3/4], [1/2, 1/2]
    student = [torch.tensor([[0.0, 0.0, ln(2)]]),  # Q = [1/4, 1/4, 1/2] -> per class [1/2, 1/2]
               torch.tensor([[0.0, ln(2), 0.0]])]  # Q = [1/4, 1/2, 1/4] -> per class [3/4, 1/4]
    loss = lss.concept_alignment_loss(lss.teacher_probs(teacher, torch.zeros(2), 1.0), student, assign, 2, 1.0)
    want = (-(0.25 * ln(0.75) + 0.75 * ln(0.25)) + ln(2)) / 2  # (t0, s1) and (t1, s0)
    assert abs(loss.item() - want) < 1e-6
    # description targets: T^0 = [1/8, 1/8, 3/4], T^1 = [1/4, 1/4, 1/2]
    loss_d = lss.concept_alignment_loss(lss.teacher_probs(teacher, torch.zeros(2), 1.0), student, assign, 2, 1.0,
                                      target="description")
    want_d = (-(ln(0.25) / 8 + ln(0.5) / 8 + 0.75 * ln(0.25)) - (0.25 * ln(0.25) * 2 + 0.5 * ln(0.5))) / 2
    assert abs(loss_d.item() - want_d) < 1e-6


def test_alignment_stable_at_clip_temperature():
    torch.manual_seed(0)
    B, K, M = 4, 5, 20
    assign = torch.arange(M) % K
    teacher = [torch.rand(B, K) * 2 - 1 for _ in range(2)]  # cosine similarities in [-1, 1]
    student = [(torch.rand(B, M) * 2 - 1).requires_grad_() for _ in range(3)]
    loss = lss.concept_alignment_loss(lss.teacher_probs(teacher, torch.zeros(K), 0.004), student, assign, K, 0.01)
    # float64 reference with the assignment matrix written out: Q~ = softmax(s / tau_s) A
    A = F.one_hot(assign, K).double()
    P = [F.softmax(t.double() / 0.004, -1) for t in teacher]
    Q = [F.softmax(s.double() / 0.01, -1) @ A for s in student]
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    want = sum(-(P[i] * Q[v].log()).sum(-1).mean() for i, v in pairs) / 4
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss.double(), want, atol=1e-4, rtol=1e-4)
    loss.backward()
    assert all(torch.isfinite(s.grad).all() for s in student)


def test_update_center():
    c = torch.tensor([1.0, 0.0])
    sims = [torch.tensor([[0.0, 2.0], [2.0, 2.0]]), torch.tensor([[4.0, 0.0], [2.0, 4.0]])]  # mean [2, 2]
    torch.testing.assert_close(lss.update_center(c, sims, 0.9), torch.tensor([0.9 + 0.2, 0.2]))


def test_ema_update():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.data.normal_()
    student.train()(torch.randn(8, 3))  # changes the student's BN running stats (buffers)
    t0 = copy.deepcopy(teacher.state_dict())
    lss.ema_update(teacher, student, 1.0)
    for n, p in teacher.named_parameters():
        assert torch.equal(p, t0[n])
    torch.testing.assert_close(teacher[1].running_mean, student[1].running_mean)  # buffers copied
    lss.ema_update(teacher, student, 0.5)
    for (n, p), q in zip(teacher.named_parameters(), student.parameters()):
        torch.testing.assert_close(p, (t0[n] + q) / 2)
    lss.ema_update(teacher, student, 0.0)
    for p, q in zip(teacher.parameters(), student.parameters()):
        assert torch.equal(p, q)
    with pytest.raises(ValueError):
        lss.ema_update(teacher, nn.Linear(3, 4), 0.5)


def test_no_gradient_to_teacher_or_text_tower(tiny_clip):
    torch.manual_seed(0)
    clip = copy.deepcopy(tiny_clip)
    C_cat = lss.build_concept_space(clip, ["run", "jump", "swim"], lss.DEFAULT_TEMPLATES)
    C_desc, assign = lss.build_description_space(clip, {"run": ["legs moving fast"], "jump": ["in the air"],
                                                        "swim": ["in water", "arms stroking"]}, ["run", "jump", "swim"])
    student = lss.VideoViT.from_clip(clip.visual, num_frames=2)
    teacher = copy.deepcopy(student).requires_grad_(False)
    views = [torch.randn(2, 2, 3, 32, 32) for _ in range(3)]  # 2 global + 1 local
    t_feat = [teacher(v) for v in views[:2]]  # deliberately not under no_grad
    s_feat = [student(v) for v in views]
    t_cat = [lss.concept_similarities(f, C_cat) for f in t_feat]
    s_cat = [lss.concept_similarities(f, C_cat) for f in s_feat]
    s_desc = [lss.concept_similarities(f, C_desc) for f in s_feat]
    center = torch.zeros(3)
    loss = (lss.concept_distillation_loss(lss.teacher_probs(t_cat, center, 0.004), s_cat, 0.01)
            + lss.concept_alignment_loss(lss.teacher_probs(t_cat, center, 0.004), s_desc, assign, 3, 0.01)
            + lss.uniform_prior_loss(lss.mean_student_probs(s_cat, 0.01)))
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is None for p in clip.parameters())
    assert student.proj.grad is not None and student.proj.grad.abs().sum() > 0
    center = lss.update_center(center, t_cat, 0.9)
    assert center.shape == (3,) and not center.requires_grad


def test_oracle_targets_replace_the_teachers_for_the_chosen_videos():
    """--targets oracle: the true class, one-hot, is the target of the videos whose truth is given (-1: the
    teacher's); distillation to it is then cross-entropy with the true class."""
    torch.manual_seed(0)
    B, K = 4, 6
    teacher = lss.teacher_probs([torch.randn(B, K) for _ in range(2)], torch.zeros(K), 0.04)
    truth = torch.tensor([2, -1, 5, -1])
    targets = lss.oracle_targets(teacher, truth)
    for p, t in zip(targets, teacher):
        assert torch.equal(p[[0, 2]], F.one_hot(torch.tensor([2, 5]), K).float())
        assert torch.equal(p[[1, 3]], t[[1, 3]])
    student = [torch.randn(B, K) for _ in range(3)]
    every = torch.tensor([2, 0, 5, 1])
    loss = lss.concept_distillation_loss(lss.oracle_targets(teacher, every), student, tau_s=0.1)
    pairs = [(0, 1), (0, 2), (1, 0), (1, 2)]
    want = sum(F.cross_entropy(student[v] / 0.1, every) for i, v in pairs) / len(pairs)
    torch.testing.assert_close(loss, want)
