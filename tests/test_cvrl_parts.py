"""Unit tests for the method half of cvrl.py: interval sampler, R3D, projection head, NT-Xent (incl. 2-process
DDP gradient equivalence on gloo), optimizer param groups / LARS, lr schedule."""

import math
import pickle
import socket

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import cvrl
import training

# ----------------------------------------------------------------------------- interval sampler


def chisquare_p(samples: np.ndarray, pmf: np.ndarray, min_expected: float = 5.0) -> float:
    """Chi-square goodness of fit of integer samples in 0..len(pmf)-1 against pmf, merging neighbouring bins
    (left to right) until each merged bin expects at least `min_expected` counts; a short tail joins the last bin."""
    from scipy import stats  # imported here: the spawned DDP workers import this module and don't need scipy
    n = len(samples)
    counts = np.bincount(samples, minlength=len(pmf)).astype(np.float64)
    assert len(counts) == len(pmf), "a sample fell outside the support of the pmf"
    obs, exp, o, e = [], [], 0.0, 0.0
    for c, p in zip(counts, pmf):
        o, e = o + c, e + n * p
        if e >= min_expected:
            obs.append(o), exp.append(e)
            o, e = 0.0, 0.0
    if e > 0:
        obs[-1] += o
        exp[-1] += e
    exp = np.array(exp) * n / np.sum(exp)  # guard against float drift in sum(pmf)
    return stats.chisquare(obs, exp).pvalue


VARIANTS = [("decreasing", 0.5), ("decreasing", 1.0), ("decreasing", 2.0), ("uniform", 1.0), ("increasing", 1.0)]


@pytest.mark.parametrize("distribution,power", VARIANTS)
def test_interval_pmf_matches_continuous_formula(distribution, power):
    M = 50
    pmf = cvrl.interval_pmf(M, distribution, power)
    assert pmf.shape == (M,) and np.all(pmf >= 0) and abs(pmf.sum() - 1) < 1e-12
    # t = floor(x) for a continuous x with the paper's density, so E[t] = E[x] - E[frac(x)] ~ E[x] - 1/2
    cont_mean = {"decreasing": (power + 1) / (2 * (power + 2)), "uniform": 0.5, "increasing": 2 / 3}[distribution] * M
    mean = np.sum(np.arange(M) * pmf)
    assert abs(mean + 0.5 - cont_mean) < 0.05, (mean, cont_mean)
    if distribution == "decreasing":
        assert np.all(np.diff(pmf) < 0)  # strictly decreasing
        # the density at the bin centre, f_p(k + 1/2), approximates P(t = k)
        k = np.arange(M) + 0.5
        f = (power + 1) / (power * M) * (1 - (k / M) ** power)
        assert np.max(np.abs(pmf - f)) < 0.01 * pmf.max()
    if distribution == "decreasing" and power == 1.0:
        # the paper's P(t) ∝ -t + c with c = M, discretised: P(t=k) = (2(M-k)-1)/M^2, so P(t=0) ~ 2/M
        np.testing.assert_allclose(pmf, (2 * (M - np.arange(M)) - 1) / M**2, rtol=1e-10)


@pytest.mark.parametrize("distribution,power", VARIANTS)
def test_sample_interval_follows_pmf(distribution, power):
    M, n = 50, 20_000
    rng = np.random.default_rng(0)
    t = np.array([cvrl.sample_interval(M, rng, distribution, power) for _ in range(n)])
    assert t.min() >= 0 and t.max() <= M - 1
    assert chisquare_p(t, cvrl.interval_pmf(M, distribution, power)) > 1e-3


def test_chisquare_has_teeth():
    # uniform draws tested against the default decreasing pmf, and the decreasing p=1 draws against p=2,
    # must both be rejected: otherwise the test above proves nothing
    M, n = 50, 20_000
    rng = np.random.default_rng(1)
    uniform = rng.integers(M, size=n)
    assert chisquare_p(uniform, cvrl.interval_pmf(M, "decreasing", 1.0)) < 1e-6
    p1 = np.array([cvrl.sample_interval(M, rng, "decreasing", 1.0) for _ in range(n)])
    assert chisquare_p(p1, cvrl.interval_pmf(M, "decreasing", 2.0)) < 1e-6


def test_bisection_equals_closed_form():
    # the official tf.while_loop bisection and t = floor(M(1 - sqrt(1-u))) agree draw by draw for p = 1
    rng = np.random.default_rng(2)
    for M in (1, 2, 7, 50, 220):
        for u in rng.random(500):
            assert cvrl.bisect_interval(u, M, 1.0) == math.floor(M * (1 - math.sqrt(1 - u)))


def test_sampler_clips_and_order():
    frames, stride, L = 16, 2, 250  # cvrl.md §1.2 worked example: M = 220
    M = L - (frames - 1) * stride
    sampler = pickle.loads(pickle.dumps(cvrl.IntervalSampler(frames, stride)))  # DataLoader workers pickle it
    rng = np.random.default_rng(3)
    s1, s2 = [], []
    for _ in range(20_000):
        i1, i2 = sampler(L, rng)
        for idx in (i1, i2):
            assert idx.shape == (frames,) and idx.dtype == np.int64
            assert 0 <= idx[0] < M  # the whole clip fits: no wrap-around for long videos
            np.testing.assert_array_equal(np.diff(idx), stride)
        s1.append(i1[0]), s2.append(i2[0])
    s1, s2 = np.array(s1), np.array(s2)
    # random order: among pairs with t > 0, the first clip is the earlier one about half the time
    different = s1 != s2
    frac = np.mean(s1[different] < s2[different])
    assert abs(frac - 0.5) < 0.02, frac
    # the interval |s1 - s2| follows the pmf
    assert chisquare_p(np.abs(s1 - s2), cvrl.interval_pmf(M)) > 1e-3
    # cvrl.md §1.3: each start is (almost exactly) uniform, as for two independent uniform starts ...
    uniform = np.full(M, 1 / M)
    assert chisquare_p(s1, uniform) > 1e-3 and chisquare_p(s2, uniform) > 1e-3
    # ... except that identical starts are twice as likely: P(t=0) = (2M-1)/M^2 ~ 2/M, not 1/M
    p0 = np.mean(~different)
    assert abs(p0 - (2 * M - 1) / M**2) < 4 * math.sqrt(2 / M / 20_000), p0
    assert p0 > 1.5 / M


def test_default_joint_is_independent_uniform_exactly():
    # cvrl.md §1.3 from the pmf, no sampling: the joint of the two starts is (1 - 1/(2(M-d)))/M^2 off the diagonal
    # and P(t=0)/M on it; so each start's marginal is uniform up to O(1/M)
    M = 60
    pmf = cvrl.interval_pmf(M)
    joint = np.zeros((M, M))
    for t in range(M):
        for a in range(M - t):
            joint[a, a + t] += pmf[t] / (M - t) / 2
            joint[a + t, a] += pmf[t] / (M - t) / 2
    d = np.abs(np.subtract.outer(np.arange(M), np.arange(M)))
    off = d > 0
    np.testing.assert_allclose(joint[off], (1 - 1 / (2 * (M - d[off]))) / M**2, rtol=1e-10)
    np.testing.assert_allclose(np.diag(joint), (2 * M - 1) / M**3, rtol=1e-10)
    assert np.max(np.abs(joint.sum(1) * M - 1)) < (math.log(M) + 1) / (2 * M)  # the edges lose ~H_M / (2M)


def test_sampler_short_video_wraps():
    frames, stride, L = 16, 2, 20  # (n-1)s = 30 >= L: both starts independent U{0..L-1}, indices loop
    sampler = cvrl.IntervalSampler(frames, stride)
    rng = np.random.default_rng(4)
    s1, s2 = [], []
    for _ in range(10_000):
        i1, i2 = sampler(L, rng)
        for idx in (i1, i2):
            assert idx.shape == (frames,) and idx.min() >= 0 and idx.max() < L
            np.testing.assert_array_equal(idx, (idx[0] + stride * np.arange(frames)) % L)
        s1.append(i1[0]), s2.append(i2[0])
    s1, s2 = np.array(s1), np.array(s2)
    uniform = np.full(L, 1 / L)
    assert chisquare_p(s1, uniform) > 1e-3 and chisquare_p(s2, uniform) > 1e-3
    assert abs(np.mean(s1 == s2) - 1 / L) < 0.01  # independent: equal starts with probability 1/L
    # the boundary L = (n-1)s + 1 gives M = 1: both clips start at frame 0
    i1, i2 = sampler((frames - 1) * stride + 1, rng)
    assert i1[0] == i2[0] == 0


@pytest.mark.parametrize("distribution", cvrl.DISTRIBUTIONS)
def test_sampler_variants_run(distribution):
    sampler = cvrl.IntervalSampler(8, 4, distribution, power=2.0)
    rng = np.random.default_rng(5)
    for L in (1, 5, 28, 29, 300):
        i1, i2 = sampler(L, rng)
        assert i1.shape == i2.shape == (8,) and max(i1.max(), i2.max()) < L


# ----------------------------------------------------------------------------- encoder and head


def num_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(scope="module")
def r3d50():
    return cvrl.build_encoder("r3d50")


def test_r3d50_params_and_shape(r3d50):
    model = r3d50
    assert 31.6e6 <= num_params(model) <= 31.8e6  # README: 31.7M; cvrl.md §3.4: 31.67M
    assert model.feature_dim == 2048
    model.eval()
    with torch.no_grad():
        h = model(torch.rand(2, 3, 16, 64, 64))  # (B, C, T, H, W)
    assert h.shape == (2, 2048)


def test_r3d18_shape():
    model = cvrl.build_encoder("r3d18")
    assert model.feature_dim == 512
    with torch.no_grad():
        assert model(torch.rand(2, 3, 8, 32, 32)).shape == (2, 512)  # train mode: BN uses batch statistics


def test_tiny_shape_and_size():
    model = cvrl.build_encoder("tiny")
    assert model.feature_dim == 128 and 0.3e6 <= num_params(model) <= 1e6
    x = torch.rand(2, 3, 8, 48, 48)  # (B, C, T, H, W): the synthetic-data setting
    assert model.stem(x).shape == (2, 16, 8, 12, 12)  # the tiny stem keeps all 8 frames
    h = model(x)
    assert h.shape == (2, 128)
    h.sum().backward()


def test_r3d_init_is_keras_variance_scaling(r3d50):
    # truncated normal at +-2 std0, std0 = sqrt(1/fan_in)/0.8796, whose actual std is sqrt(1/fan_in) (He: sqrt(2/fan_in))
    model = r3d50
    conv = model.stages[3][0].conv2  # 512 -> 512, 1x3x3: 2.4M weights
    fan_in = conv.in_channels * math.prod(conv.kernel_size)
    w = conv.weight.detach()
    assert abs(w.std().item() / math.sqrt(1 / fan_in) - 1) < 0.01
    assert w.abs().max().item() <= 2 * math.sqrt(1 / fan_in) / 0.87962566103423978 + 1e-7
    bn = model.stages[3][0].bn3
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and bn.momentum == 0.1 and bn.eps == 1e-5


def test_projection_head():
    head = cvrl.ProjectionHead(128, hidden=64)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    bns = [m for m in head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(linears) == 4 and len(bns) == 3  # 3 hidden layers with BN, output layer without
    assert all(bn.momentum == 0.003 and bn.eps == 1e-5 for bn in bns)
    assert all(torch.all(m.bias == 0) for m in linears)
    bound = math.sqrt(6 / (128 + 64))  # glorot uniform
    assert linears[0].weight.abs().max() <= bound and linears[0].weight.abs().max() > 0.9 * bound
    assert head(torch.randn(4, 128)).shape == (4, 128)


# ----------------------------------------------------------------------------- NT-Xent


def nt_xent_naive(z1, z2, temperature):
    """The paper's equation, one anchor at a time: L_i = -log(exp(s_ii'/tau) / sum_{k != i} exp(s_ik/tau)) over all
    2N anchors, returned as (1/N) sum_i L_i = loss_a + loss_b of the official code."""
    n = z1.shape[0]
    z = torch.cat([F.normalize(z1, dim=1), F.normalize(z2, dim=1)])  # (2N, D)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        num = torch.exp(z[i] @ z[pos] / temperature)
        den = sum(torch.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i)
        total = total - torch.log(num / den)
    return total / n


def test_nt_xent_hand_computed():
    # z1 = [(2,0), (0,3)] and z2 = [(1,1), (0,-1)] normalise to a1=(1,0), a2=(0,1), b1=(c,c), b2=(0,-1), c=1/sqrt(2)
    z1 = torch.tensor([[2.0, 0.0], [0.0, 3.0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1.0], [0.0, -1.0]], dtype=torch.float64)
    tau, c = 0.5, 1 / math.sqrt(2)
    # cosines: a1.a2 = 0, a1.b1 = c, a1.b2 = 0, a2.b1 = c, a2.b2 = -1, b1.b2 = -c
    e = lambda s: math.exp(s / tau)
    l_a1 = -math.log(e(c) / (e(c) + e(0) + e(0)))  # anchor a1: positive b1; negatives b2, a2
    l_a2 = -math.log(e(-1) / (e(c) + e(-1) + e(0)))  # anchor a2: positive b2; negatives b1, a1
    l_b1 = -math.log(e(c) / (e(c) + e(c) + e(-c)))  # anchor b1: positive a1; negatives a2, b2
    l_b2 = -math.log(e(-1) / (e(0) + e(-1) + e(-c)))  # anchor b2: positive a2; negatives a1, b1
    expected = (l_a1 + l_a2) / 2 + (l_b1 + l_b2) / 2  # loss_a + loss_b
    assert cvrl.nt_xent(z1, z2, tau).item() == pytest.approx(expected, rel=1e-12)
    assert nt_xent_naive(z1, z2, tau).item() == pytest.approx(expected, rel=1e-12)


def test_nt_xent_equals_naive_with_grads():
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 8, generator=g, dtype=torch.float64, requires_grad=True)
    loss = cvrl.nt_xent(z1, z2, 0.1)
    g1, g2 = torch.autograd.grad(loss, (z1, z2))
    ref = nt_xent_naive(z1, z2, 0.1)
    r1, r2 = torch.autograd.grad(ref, (z1, z2))
    torch.testing.assert_close(loss, ref, rtol=1e-10, atol=0)
    torch.testing.assert_close(g1, r1, rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(g2, r2, rtol=1e-8, atol=1e-12)
    # fp32 inputs, also under bf16 autocast (the loss opts out of it), give the same value
    assert cvrl.nt_xent(z1.float(), z2.float(), 0.1).item() == pytest.approx(loss.item(), rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cvrl.nt_xent(z1.float(), z2.float(), 0.1).item() == pytest.approx(loss.item(), rel=1e-5)


def _fixed_problem():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(8, 6, generator=g, dtype=torch.float64)  # 8 videos, view 1
    x2 = x1 + 0.3 * torch.randn(8, 6, generator=g, dtype=torch.float64)  # view 2: a perturbed copy
    weight = torch.randn(4, 6, generator=g, dtype=torch.float64)
    bias = torch.randn(4, generator=g, dtype=torch.float64)
    return x1, x2, weight, bias


def _make_linear(weight, bias):
    lin = nn.Linear(6, 4, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(weight), lin.bias.copy_(bias)
    return lin


def _no_grad_gather(x):
    """The classic bug: a plain all_gather (no autograd) with the local slice put back so that *some* gradient
    flows. Each rank then only gets the gradient of its own loss w.r.t. its own embeddings."""
    import torch.distributed as dist
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def _ddp_worker(rank, world, port, out_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        x1, x2, weight, bias = _fixed_problem()
        b = x1.shape[0] // world
        local = torch.cat([x1[rank * b:(rank + 1) * b], x2[rank * b:(rank + 1) * b]])  # (2b, 6): [view 1; view 2]
        results = {}
        good_gather = cvrl.all_gather_with_grad
        for name, gather in (("differentiable", good_gather), ("no_grad", _no_grad_gather)):
            cvrl.all_gather_with_grad = gather
            lin = _make_linear(weight, bias)
            model = DDP(lin)
            z1, z2 = model(local).chunk(2)  # one forward for both views, as the official batch layout (cvrl.md §4.2)
            loss = cvrl.nt_xent(z1, z2, temperature=0.1)
            loss.backward()  # DDP averages the parameter gradients over ranks
            mean_loss = loss.detach().clone()
            dist.all_reduce(mean_loss)
            results[name] = dict(loss=mean_loss / world, weight=lin.weight.grad.clone(), bias=lin.bias.grad.clone())
        cvrl.all_gather_with_grad = good_gather
        torch.save(results, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_nt_xent_ddp_matches_single_process(tmp_path):
    world = 2
    torch.multiprocessing.spawn(_ddp_worker, args=(world, _free_port(), str(tmp_path / "out")), nprocs=world)
    # single process on the concatenated batch (no process group: nt_xent is purely local)
    x1, x2, weight, bias = _fixed_problem()
    lin = _make_linear(weight, bias)
    z1, z2 = lin(torch.cat([x1, x2])).chunk(2)
    loss = cvrl.nt_xent(z1, z2, temperature=0.1)
    loss.backward()
    for rank in range(world):
        res = torch.load(tmp_path / f"out.{rank}")
        good = res["differentiable"]
        torch.testing.assert_close(good["loss"], loss.detach(), rtol=1e-5, atol=0)
        torch.testing.assert_close(good["weight"], lin.weight.grad, rtol=1e-5, atol=1e-12)
        torch.testing.assert_close(good["bias"], lin.bias.grad, rtol=1e-5, atol=1e-12)
        # the no-grad gather gives the same loss but a wrong gradient: this is what the test is here to catch
        bad = res["no_grad"]
        torch.testing.assert_close(bad["loss"], loss.detach(), rtol=1e-5, atol=0)
        assert not torch.allclose(bad["weight"], lin.weight.grad, rtol=1e-3)


# ----------------------------------------------------------------------------- optimizer and schedule


def _small_model():
    return nn.Sequential(cvrl.build_encoder("tiny"), cvrl.ProjectionHead(128, hidden=32))


@pytest.mark.parametrize("name", ["sgd", "lars"])
def test_weight_decay_groups(name):
    model = _small_model()
    opt = cvrl.configure_optimizer(model, lr=0.1, weight_decay=1e-6, optimizer=name)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    not_decayed = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    norm_or_bias = set()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
            norm_or_bias |= {id(m.weight), id(m.bias)}
        elif isinstance(m, (nn.Linear, nn.Conv3d)):
            assert id(m.weight) in decayed
            if m.bias is not None:
                norm_or_bias.add(id(m.bias))
    assert norm_or_bias and norm_or_bias <= not_decayed and not (norm_or_bias & decayed)
    assert decayed | not_decayed == {id(p) for p in model.parameters()} and not (decayed & not_decayed)
    if name == "sgd":
        assert isinstance(opt, torch.optim.SGD)
        assert all(g["momentum"] == 0.9 and g["nesterov"] is False for g in opt.param_groups)
    model(torch.rand(4, 3, 8, 48, 48)).square().mean().backward()
    opt.step()  # runs


def test_lars_step_length():
    # first LARS step: v = lr * trust * g, trust = eta ||w|| / ||g||, so an adapted tensor moves by lr * eta * ||w||;
    # a non-adapted one (BN, bias) moves by lr * ||g|| like plain SGD
    lin = nn.Linear(10, 5)
    lin(torch.randn(3, 10)).sum().backward()
    w0, b0, gb = lin.weight.detach().clone(), lin.bias.detach().clone(), lin.bias.grad.clone()
    opt = cvrl.configure_optimizer(lin, lr=2.0, weight_decay=0.0, optimizer="lars")
    opt.step()
    step_w = torch.linalg.vector_norm(lin.weight.detach() - w0).item()
    assert step_w == pytest.approx(2.0 * 0.001 * torch.linalg.vector_norm(w0).item(), rel=1e-5)
    torch.testing.assert_close(lin.bias.detach(), b0 - 2.0 * gb)


class PerTensorLARS(cvrl.LARS):
    """The LARS step as it was written before the multi-tensor version: one tensor at a time (the reference)."""

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = w.grad
                if group["weight_decay"] != 0:
                    g = g.add(w, alpha=group["weight_decay"])
                scale = group["lr"]
                if group["lars_adapt"]:
                    w_norm, g_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust_coefficient"] * w_norm / g_norm, torch.ones_like(w_norm))
                    scale = scale * trust
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                v = state["momentum_buffer"]
                v.mul_(group["momentum"]).add_(g * scale)
                w.sub_(v)


def lars_pair(device="cpu"):
    """Two identical small models (+ an unused parameter that never gets a gradient, and a zero weight whose trust
    ratio falls back to 1), one under cvrl.LARS, one under the per-tensor reference, same groups."""
    import copy
    torch.manual_seed(0)
    a = _small_model()
    a.unused = nn.Parameter(torch.randn(3, 3))  # decayed group, grad stays None
    a.zero = nn.Parameter(torch.zeros(4, 4))  # ||w|| = 0: trust 1
    a.to(device)
    b = copy.deepcopy(a)
    make = lambda m, cls: cls([dict(params=[p for p in m.parameters() if p.ndim > 1], weight_decay=1e-2, lars_adapt=True),
                               dict(params=[p for p in m.parameters() if p.ndim <= 1], weight_decay=0.0, lars_adapt=False)],
                              lr=0.5, momentum=0.9)
    return (a, make(a, cvrl.LARS)), (b, make(b, PerTensorLARS))


def lars_steps(pairs, device="cpu", steps=4):
    """A few steps with changing lr and data; yields after each step."""
    g = torch.Generator().manual_seed(1)
    for s in range(steps):
        x = torch.rand(4, 3, 8, 48, 48, generator=g).to(device)
        for model, opt in pairs:
            for group in opt.param_groups:
                group["lr"] = 0.5 / (s + 1)
            opt.zero_grad(set_to_none=True)
            (model(x).square().mean() + (model.zero * torch.ones(4, 4, device=device)).sum()).backward()
            opt.step()
        yield s


def test_foreach_lars_equals_the_per_tensor_loop_bit_for_bit():
    """On the CPU the multi-tensor LARS is the per-tensor loop exactly: weights and momentum buffers torch.equal
    after every step, with weight decay, the non-adapted BN/bias group, a parameter without gradient and a zero one."""
    (a, oa), (b, ob) = pairs = lars_pair()
    for _ in lars_steps(pairs):
        for (na, pa), pb in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(pa, pb), na
            if pa.grad is not None:
                assert torch.equal(oa.state[pa]["momentum_buffer"], ob.state[pb]["momentum_buffer"]), na
    assert a.unused.grad is None and a.unused not in oa.state
    assert not torch.equal(a.zero, torch.zeros(4, 4))  # it moved (trust 1)


def test_sgd_is_fused_only_on_cuda():
    opt = cvrl.configure_optimizer(_small_model(), lr=0.1, optimizer="sgd")
    assert all(not g["fused"] for g in opt.param_groups)  # CPU: torch's default per-tensor loop, as before


def test_lr_schedule():
    total, warmup, base = 1000, 100, 0.32
    lrs = [training.warmup_cosine(s, total, warmup, base) for s in range(total + 1)]
    assert lrs[0] == 0.0
    assert lrs[warmup // 2] == pytest.approx(base / 2)
    assert lrs[warmup] == pytest.approx(base)
    assert lrs[total] == pytest.approx(0.0, abs=1e-12)
    assert lrs[(total + warmup) // 2] == pytest.approx(base / 2)  # cosine midpoint
    assert all(a < b for a, b in zip(lrs[:warmup], lrs[1:warmup + 1]))  # increasing during warmup
    assert all(a > b for a, b in zip(lrs[warmup:total], lrs[warmup + 1:]))  # strictly decreasing after
    assert training.warmup_cosine(5, 10, 0, 1.0) == pytest.approx(0.5)  # no warmup
