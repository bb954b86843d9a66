def render_synthetic_video(label: int, rng: np.random.Generator, size=64, frames=48, nuisance=0.0) -> np.ndarray:
    """One synthetic action video -> uint8 (T, H, W, 3).

    Speeds are per frame, so any window of a video shows its motion clearly (a CVRL clip sees a third of the
    video): translations wrap around the frame edges (the shape leaves on one side and comes back on the other, so
    the direction never reverses), growth and shrinkage are sawtooths in log-size (grow, snap back, grow again)."""
    S, T = size, frames
    t = np.arange(T, dtype=np.float64)               # frame index
    px = S / 64                                      # speeds are given for a 64-pixel frame
    sides = int(rng.choice([3, 4, 5, 4]))
    aspect = rng.choice([1.0, 1.0, 1.6])             # 1.6 makes a bar: rotation is visible even for a square
    r_lo, r_hi = 0.10 * S, 0.20 * S
    radius = np.full(T, rng.uniform(r_lo, r_hi))
    angle = np.full(T, rng.uniform(0, 2 * np.pi))
    m = r_hi + 2 * px                                # keep a shape that does not wrap inside the frame
    cx, cy = np.full(T, rng.uniform(m, S - m)), np.full(T, rng.uniform(m, S - m))
    wrap = None
    name = SYNTHETIC_CLASSES[label]
    if name in ("move_sideways", "move_up", "move_down"):
        v = rng.uniform(0.8, 1.6) * px               # pixels per frame
        if name == "move_sideways":
            cx, wrap = rng.uniform(0, S) + rng.choice([-1, 1]) * v * t, "x"
        else:                                        # image y grows downwards
            cy, wrap = rng.uniform(0, S) + (-1 if name == "move_up" else 1) * v * t, "y"
    elif name == "rotate":
        angle = angle + rng.choice([-1, 1]) * np.deg2rad(rng.uniform(5, 10)) * t
    elif name in ("grow", "shrink"):
        period = rng.uniform(20, 32)                 # frames per grow (or shrink) cycle
        phase = ((t / period + rng.random()) % 1.0)  # 0 -> 1 within a cycle
        phase = phase if name == "grow" else 1 - phase
        radius = r_lo * (r_hi / r_lo) ** phase
    elif name == "orbit":
        R = rng.uniform(0.12, 0.20) * S
        c0x, c0y = rng.uniform(m + R, S - m - R), rng.uniform(m + R, S - m - R)
        phi = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * np.deg2rad(rng.uniform(8, 15)) * t
        cx, cy = c0x + R * np.cos(phi), c0y + R * np.sin(phi)
    cx, cy = cx % S if wrap == "x" else cx, cy % S if wrap == "y" else cy

    # appearance
    nz = float(nuisance)
    colour = _hsv_colour(rng, nz) if nz > 0 else np.ones(3)
    pad = int(np.ceil(0.5 * S)) if nz > 0 else 0
    if nz > 0:
        tex = _smooth_texture(rng, S + 2 * pad, S + 2 * pad)
        bg_col = _hsv_colour(rng, nz) * 0.6
        background = (nz * tex[..., None] * bg_col + (1 - nz) * 0.0).astype(np.float32)
        pan = rng.uniform(-1, 1, size=2) * nz * 0.3 * S * t[:, None]          # camera pan, pixels
        has_distractor = rng.random() < nz
        d_par = (rng.uniform(m, S - m), rng.uniform(m, S - m), rng.uniform(r_lo, r_hi), rng.uniform(0, 6.28),
                 int(rng.choice([3, 4, 5])), _hsv_colour(rng, nz))
    # a wrapping shape is drawn at its position and one frame-width away on each side along its axis
    wraps = [(0, 0)] + ([(S, 0), (-S, 0)] if wrap == "x" else [(0, S), (0, -S)] if wrap == "y" else [])
    video = np.zeros((T, S, S, 3), np.float32)
    for i in range(T):
        if nz > 0:
            ox, oy = int(round(pad + pan[i, 0])), int(round(pad + pan[i, 1]))
            ox, oy = np.clip(ox, 0, 2 * pad), np.clip(oy, 0, 2 * pad)
            frame = background[oy:oy + S, ox:ox + S].copy()
            shift = (ox - pad, oy - pad)
            if has_distractor:
                dx, dy, dr, da, ds, dc = d_par
                mk = _polygon_mask(dx - shift[0], dy - shift[1], dr, da, ds, 1.0, S)[..., None]
                frame = frame * (1 - mk) + mk * dc
        else:
            frame, shift = np.zeros((S, S, 3), np.float32), (0, 0)
        mk = np.max([_polygon_mask(cx[i] - shift[0] + ox, cy[i] - shift[1] + oy, radius[i], angle[i], sides, aspect, S)
                     for ox, oy in wraps], axis=0)[..., None]
        video[i] = frame * (1 - mk) + mk * colour
    return (video.clip(0, 1) * 255 + 0.5).astype(np.uint8)


