"""Seizure-motion descriptors from a record's pose track: per-window body-region kinematics, publicly scaled.

Each sliding window (default 3 s, hop 0.5 s) of the MediaPipe pose track gives
a small vector describing how the head, arms, legs and trunk move: log motion
energy, the share of the movement that is rhythmic in 1-6 Hz (clonic jerks,
automatisms) and its frequency, left/right synchrony and asymmetry (ordered
stronger/weaker side, so a left-sided seizure and its mirror image look the
same), arm posture with stillness (tonic stiffening), and how much of the body
was seen. Positions are centred on the torso and divided by the torso length,
so camera distance, framing and in-plane rotation drop out.

Privacy: the only statistic used is of the record itself (its torso length);
the scaling to about [-1, 1] is a fixed affine per feature chosen from the
feature's physical meaning (`_SCALE`), then a clip to [-CLIP, CLIP]. Nothing is
fitted on any patient's data, so the features can be computed at a site and
used under DP without a leak through normalisers.

Missing data: pose-less frames and limb landmarks of low visibility are
missing; gaps up to MAX_GAP_S are linearly interpolated, longer ones stay
missing. A window whose torso is seen in under MIN_COVERAGE of it is invalid
(all features 0); a limb seen too little gets the neutral value 0 for its
features. No NaN or inf leaves this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from semiofed.common.errors import RecordError, SemiofedError
from semiofed.common.records.schema import FRAME_TIMES, POSE, POSE_MASK, ROTATION

MOTION_FEATURES_VERSION = 1

WINDOW_S = 3.0  # long enough for three cycles of a 1 Hz late-clonic jerk, short enough to follow phases
HOP_S = 0.5
MAX_GAP_S = 0.4  # interpolate dropouts up to ~6 frames at 15 fps; longer gaps are not motion we saw
MIN_COVERAGE = 0.6  # share of a window a point must be seen in for its features to count
MIN_VISIBILITY = 0.3  # MediaPipe visibility below this is a guessed (occluded/off-frame) limb
MAX_SPEED = 20.0  # torso lengths per second; faster is a tracking jump, not a movement
BAND_HZ = (1.0, 6.0)  # clonic jerks (4 Hz slowing to 1 Hz) and automatisms (1-3 Hz)
PEAK_HALF_WIDTH_HZ = 0.6  # the Hann main lobe of a 3 s window is +-0.67 Hz
LOW_CUT_HZ = 0.3  # power below this is posture drift, not part of the movement spectrum
ENERGY_FLOOR = 1e-3  # torso lengths per second; below MediaPipe's jitter
CLIP = 3.0
DEFAULT_FPS = 15.0

# MediaPipe pose indices (subject's left/right).
_NOSE, _L_SHOULDER, _R_SHOULDER, _L_WRIST, _R_WRIST = 0, 11, 12, 15, 16
_L_HIP, _R_HIP, _L_ANKLE, _R_ANKLE = 23, 24, 27, 28
_TORSO = (_L_SHOULDER, _R_SHOULDER, _L_HIP, _R_HIP)
# Tracked points: the head, both wrists, both ankles (positions relative to the body centre).
_HEAD, _LW, _RW, _LA, _RA = 0, 1, 2, 3, 4
_POINT_JOINTS = (_NOSE, _L_WRIST, _R_WRIST, _L_ANKLE, _R_ANKLE)

# name -> (offset, scale): scaled = (raw - offset) / scale, then clipped. Raw units in comments.
_SCALE: dict[str, tuple[float, float]] = {
    # log10 RMS speed in torso lengths/s: 0.01 (jitter) -> -1, 0.1 -> 0, 1 -> +1, 10 (violent clonus) -> +2
    "head_energy": (-1.0, 1.0),
    "head_rhythm": (0.5, 0.5),  # share of movement power in one 1-6 Hz peak, [0, 1] -> [-1, 1]
    "head_freq": (3.5, 2.5),  # Hz, 1..6 -> -1..1
    "head_offset": (0.25, 0.25),  # |head sideways of the shoulder midpoint| in torso lengths, 0..0.5 -> -1..1
    "arm_energy_strong": (-1.0, 1.0),
    "arm_energy_weak": (-1.0, 1.0),
    "arm_asymmetry": (0.5, 0.5),  # (strong - weak) / (strong + weak) of RMS speed, [0, 1]
    "arm_speed_sync": (0.0, 1.0),  # Pearson r of left vs right speed
    "arm_velocity_sync": (0.0, 1.0),  # Pearson r of left vs right velocity along the body axis (in-phase +1)
    "arm_rhythm": (0.5, 0.5),
    "arm_freq": (3.5, 2.5),
    "arm_jerk": (1.5, 1.0),  # log2(peak / RMS speed) of the stronger arm: sinusoid 0.5, jerk trains ~2-3
    "leg_energy_strong": (-1.0, 1.0),
    "leg_energy_weak": (-1.0, 1.0),
    "leg_asymmetry": (0.5, 0.5),
    "leg_speed_sync": (0.0, 1.0),
    "leg_velocity_sync": (0.0, 1.0),
    "leg_rhythm": (0.5, 0.5),
    "leg_freq": (3.5, 2.5),
    "trunk_energy": (-1.0, 1.0),  # the body centre's own movement (rocking, whole-body jerks)
    "trunk_rhythm": (0.5, 0.5),
    "trunk_freq": (3.5, 2.5),
    "arm_elevation": (0.0, 1.0),  # mean wrist height above the shoulder midpoint along the body axis, torso lengths
    "arm_abduction": (0.5, 0.5),  # mean |wrist sideways of the body axis|, torso lengths, 0..1 -> -1..1
    # |left - right| of wrist elevation plus abduction, torso lengths: unilateral (dystonic, figure-of-4) posturing
    "arm_posture_asymmetry": (0.25, 0.25),
    "tonic_hold": (0.5, 0.5),  # arm extension x stillness, [0, 1]: limbs held out and not moving
    "body_energy": (-1.0, 1.0),  # log10 RMS speed over head, wrists and ankles together
    "ipsi_sync": (0.0, 1.0),  # r of the stronger arm's speed vs the same side's leg (hemiclonic march)
    "contra_sync": (0.0, 1.0),  # r of the stronger arm's speed vs the other side's leg (generalisation)
    "pose_rate": (0.5, 0.5),  # share of the window's frames with a pose, [0, 1]
    "arm_visibility": (0.5, 0.5),  # mean share of the window each wrist was seen in
    "leg_visibility": (0.5, 0.5),
}
MOTION_FEATURE_NAMES: tuple[str, ...] = tuple(_SCALE)
MOTION_DIM = len(MOTION_FEATURE_NAMES)
# The descriptors that tell a bilateral (generalised tonic-clonic) from a focal motor seizure: how hard and how
# symmetrically both arms move, whether they jerk together, whether the legs join the stronger arm, and the tonic
# hold. Chosen once, on the design cohort only (bench/bench_utility.py's dev cohort, phantom seed 2021, never a
# test cohort): every descriptor whose seizure mean separates FOS from TCS with |AUROC - 0.5| >= 0.2 there. The
# default model reads these ten (plus the window's validity): fewer inputs, fewer parameters, less DP noise on the
# gradient (docs/privacy.md, "Training defaults"); `--descriptors all` feeds every descriptor.
SEMIOLOGY_DESCRIPTORS: tuple[str, ...] = (
    "head_energy", "arm_energy_strong", "arm_energy_weak", "arm_asymmetry", "arm_speed_sync", "arm_velocity_sync",
    "body_energy", "ipsi_sync", "contra_sync", "tonic_hold",
)


def check_descriptors(names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` if each is a motion descriptor, named once; otherwise a SemiofedError naming the bad ones."""
    unknown = [n for n in names if n not in MOTION_FEATURE_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise SemiofedError(f"motion descriptors {unknown or list(names)} are unknown, repeated or none",
                            f"name each once, from: {', '.join(MOTION_FEATURE_NAMES)} (or 'all')")
    return names


POOLED_FEATURE_NAMES: tuple[str, ...] = tuple(f"{n}_mean" for n in MOTION_FEATURE_NAMES) + tuple(
    f"{n}_p90" for n in MOTION_FEATURE_NAMES) + ("valid_share",)
POOLED_DIM = len(POOLED_FEATURE_NAMES)
_OFFSET = np.array([v[0] for v in _SCALE.values()], dtype=np.float64)
_DIVISOR = np.array([v[1] for v in _SCALE.values()], dtype=np.float64)


def scale_features(raw: np.ndarray) -> np.ndarray:
    """The fixed public affine of every feature, then a clip to [-CLIP, CLIP] (NaN -> 0)."""
    scaled = (np.asarray(raw, dtype=np.float64) - _OFFSET) / _DIVISOR
    return np.clip(np.nan_to_num(scaled, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)


def unscale_features(scaled: np.ndarray) -> np.ndarray:
    """Back to physical units (Hz, torso lengths/s as log10, shares): exact inside the clip range."""
    return np.asarray(scaled, dtype=np.float64) * _DIVISOR + _OFFSET


# ---------------------------------------------------------------- resampling

def _check(arrays: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    missing = [k for k in (POSE, POSE_MASK, FRAME_TIMES) if k not in arrays]
    if missing:
        raise RecordError(f"motion features need record arrays {', '.join(missing)}", "re-run `semiofed site prepare`")
    pose = np.asarray(arrays[POSE], dtype=np.float64)
    mask = np.asarray(arrays[POSE_MASK]).astype(bool)
    times = np.asarray(arrays[FRAME_TIMES], dtype=np.float64)
    if pose.ndim != 3 or pose.shape[1:] != (33, 4) or mask.shape != (pose.shape[0],) or times.shape != (pose.shape[0],):
        raise RecordError(f"pose {pose.shape}, pose_mask {mask.shape} and frame_times {times.shape} are not [T,33,4], [T], [T]",
                          "pass the arrays of one record as written by `semiofed site prepare`")
    return pose, mask, times


def _grid(times: np.ndarray) -> tuple[np.ndarray, float]:
    """A uniform time grid over the record at its median frame rate."""
    finite = times[np.isfinite(times)]
    if finite.size < 2:
        return (finite[:1] if finite.size else np.zeros(1)), DEFAULT_FPS
    steps = np.diff(np.sort(finite))
    steps = steps[steps > 0]
    fps = float(1.0 / np.median(steps)) if steps.size else DEFAULT_FPS
    n = int(np.floor((finite.max() - finite.min()) * fps + 1e-6)) + 1
    return finite.min() + np.arange(n) / fps, fps


def _resample(times: np.ndarray, values: np.ndarray, seen: np.ndarray, grid: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """values [T, ...] seen at `seen` frames -> (grid values, grid presence); gaps <= MAX_GAP_S interpolated."""
    out = np.zeros((grid.size,) + values.shape[1:], dtype=np.float64)
    t = times[seen]
    if t.size == 0:
        return out, np.zeros(grid.size, dtype=bool)
    order = np.argsort(t, kind="stable")
    t, v = t[order], values[seen][order]
    flat = v.reshape(t.size, -1)
    for c in range(flat.shape[1]):
        out.reshape(grid.size, -1)[:, c] = np.interp(grid, t, flat[:, c])
    idx = np.searchsorted(t, grid)
    prev = t[np.clip(idx - 1, 0, t.size - 1)]
    nxt = t[np.clip(idx, 0, t.size - 1)]
    near = np.minimum(np.abs(grid - prev), np.abs(grid - nxt)) <= 0.5 / fps + 1e-6
    bridged = (idx > 0) & (idx < t.size) & (nxt - prev <= MAX_GAP_S + 1e-6)
    return out, near | bridged


# ---------------------------------------------------------------- window statistics

def _masked_mean(x: np.ndarray, m: np.ndarray, axis: int = 1) -> np.ndarray:
    return (x * m).sum(axis=axis) / np.maximum(m.sum(axis=axis), 1.0)


def _masked_corr(a: np.ndarray, b: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Pearson r along axis 1 over the samples where m; 0 where either side does not vary."""
    n = np.maximum(m.sum(axis=1), 1.0)
    da = a - ((a * m).sum(axis=1) / n)[:, None]
    db = b - ((b * m).sum(axis=1) / n)[:, None]
    cov = (da * db * m).sum(axis=1)
    va, vb = (da * da * m).sum(axis=1), (db * db * m).sum(axis=1)
    ok = (va > 1e-12) & (vb > 1e-12) & (m.sum(axis=1) >= 3)
    return np.where(ok, cov / np.sqrt(np.maximum(va * vb, 1e-24)), 0.0)


def _spectrum(v: np.ndarray, m: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """(rhythmic share, peak frequency) of 2-D velocities v [W, n, 2] seen where m [W, n]."""
    n = v.shape[1]
    mean = (v * m[..., None]).sum(axis=1, keepdims=True) / np.maximum(m.sum(axis=1), 1.0)[:, None, None]
    x = (v - mean) * m[..., None] * np.hanning(n)[None, :, None]
    n_fft = max(256, 1 << int(np.ceil(np.log2(max(n, 2)))))
    power = (np.abs(np.fft.rfft(x, n=n_fft, axis=1)) ** 2).sum(axis=2)
    freqs = np.fft.rfftfreq(n_fft, 1.0 / fps)
    band = (freqs >= BAND_HZ[0]) & (freqs <= min(BAND_HZ[1], fps / 2))
    total = power[:, freqs >= LOW_CUT_HZ].sum(axis=1)
    if not band.any():
        return np.zeros(v.shape[0]), np.full(v.shape[0], np.mean(BAND_HZ))
    peak = freqs[band][np.argmax(power[:, band], axis=1)]
    near = np.abs(freqs[None, :] - peak[:, None]) <= PEAK_HALF_WIDTH_HZ
    share = np.where(total > 1e-18, (power * near).sum(axis=1) / np.maximum(total, 1e-18), 0.0)
    return np.clip(share, 0.0, 1.0), peak


def _log_energy(rms: np.ndarray) -> np.ndarray:
    return np.log10(np.maximum(rms, ENERGY_FLOOR))


# ---------------------------------------------------------------- public API

def window_times(duration_s: float, *, window_s: float = WINDOW_S, hop_s: float = HOP_S, start_s: float = 0.0) -> np.ndarray:
    """[W, 2] start/end seconds of the windows over a record (one shorter window if the record is shorter)."""
    if not (window_s > 0 and hop_s > 0):
        raise ValueError(f"window_s {window_s} and hop_s {hop_s} must be positive")
    if duration_s <= window_s:
        return np.array([[start_s, start_s + max(duration_s, 0.0)]], dtype=np.float64)
    count = int(np.floor((duration_s - window_s) / hop_s + 1e-3)) + 1  # tolerate float32 frame times
    starts = start_s + hop_s * np.arange(count)
    return np.stack([starts, starts + window_s], axis=1)


@dataclass
class Tracks:
    """Landmark tracks of a record on a uniform grid, torso-normalised, cut into fixed-length windows."""

    fps: float
    idx: np.ndarray  # [W, n] grid indices of each window
    rel: np.ndarray  # [G, P, 2] the points, torso lengths from the body centre
    point_ok: np.ndarray  # [G, P]
    vel: np.ndarray  # [G, P, 2] their velocities, torso lengths / s
    vel_ok: np.ndarray  # [G, P]
    torso: np.ndarray  # [G, 4, 2] shoulders and hips (frame units)
    torso_ok: np.ndarray  # [G]
    centre: np.ndarray  # [G, 2] (frame units)
    scale: float  # the record's median torso length (frame units)
    up: np.ndarray  # [G, 2] the body axis
    side: np.ndarray  # [G, 2]
    trunk_vel: np.ndarray  # [G, 2] the body centre's own velocity, torso lengths / s
    trunk_ok: np.ndarray  # [G]
    times: np.ndarray  # [T] frame times
    detected: np.ndarray  # [T] frames with a pose
    grid: np.ndarray  # [G] seconds


def _velocity(pos: np.ndarray, ok: np.ndarray, fps: float) -> tuple[np.ndarray, np.ndarray]:
    """Velocities between neighbouring grid samples (speeds clipped at MAX_SPEED) and where they are defined."""
    vel = np.zeros_like(pos)
    vok = np.zeros_like(ok)
    if pos.shape[0] > 1:
        vel[:-1] = np.diff(pos, axis=0) * fps
        vok[:-1] = ok[1:] & ok[:-1]
    speed = np.linalg.norm(vel, axis=-1)
    vel = vel * (np.minimum(speed, MAX_SPEED) / np.maximum(speed, 1e-12))[..., None]
    return vel * vok[..., None], vok


def body_tracks(arrays: Mapping[str, np.ndarray], joints: tuple[int, ...], *, window_s: float = WINDOW_S,
                hop_s: float = HOP_S, frame_size: tuple[int, int] | None = None) -> tuple[np.ndarray, Tracks | None]:
    """(window bounds [W, 2] seconds, the torso-normalised tracks of the pose landmarks `joints`), the tracks None
    when no movement can be measured (fewer than two frames, or no torso). `frame_size` as in `window_features`.
    A limb landmark counts where MediaPipe's visibility is at least MIN_VISIBILITY (the nose always)."""
    pose, mask, times = _check(arrays)
    grid, fps = _grid(times)
    bounds = window_times(grid[-1] - grid[0] + 1.0 / fps, window_s=window_s, hop_s=hop_s, start_s=float(grid[0]))
    if pose.shape[0] < 2 or grid.size < 2:  # no movement can be measured from one frame
        return bounds, None
    xy = pose[:, :, :2].copy()
    if frame_size is not None and frame_size[0] > 0 and frame_size[1] > 0:
        aspect = np.full(pose.shape[0], frame_size[0] / frame_size[1])
        if ROTATION in arrays:
            turned = (np.asarray(arrays[ROTATION]).astype(np.int64) % 180) == 90
            aspect = np.where(turned, 1.0 / aspect, aspect)
        xy[:, :, 0] *= aspect[:, None]
    finite = np.isfinite(xy).all(axis=2) & np.isfinite(times)[:, None]
    visible = np.nan_to_num(pose[:, :, 3], nan=0.0) >= MIN_VISIBILITY
    xy = np.nan_to_num(xy)
    detected = mask & np.isfinite(times)

    # The torso frames the body: MediaPipe infers shoulders and hips even when they are covered.
    torso_seen = detected & finite[:, list(_TORSO)].all(axis=1)
    torso, torso_ok = _resample(times, xy[:, list(_TORSO)], torso_seen, grid, fps)
    shoulder_mid = torso[:, :2].mean(axis=1)
    hip_mid = torso[:, 2:].mean(axis=1)
    axis_vec = shoulder_mid - hip_mid
    length = np.maximum(np.linalg.norm(axis_vec, axis=1), np.linalg.norm(torso[:, 0] - torso[:, 1], axis=1))
    scale = float(np.median(length[torso_ok])) if torso_ok.any() else 0.0
    if not scale > 1e-4:
        return bounds, None
    centre = (shoulder_mid + hip_mid) / 2
    up = axis_vec / np.maximum(np.linalg.norm(axis_vec, axis=1, keepdims=True), 1e-9)
    side = np.stack([-up[:, 1], up[:, 0]], axis=1)

    points = np.zeros((grid.size, len(joints), 2))
    point_ok = np.zeros((grid.size, len(joints)), dtype=bool)
    for k, joint in enumerate(joints):
        seen = detected & finite[:, joint] & (visible[:, joint] | (joint == _NOSE))
        points[:, k], point_ok[:, k] = _resample(times, xy[:, joint], seen, grid, fps)
    point_ok &= torso_ok[:, None]
    rel = (points - centre[:, None]) / scale  # [G, P, 2] torso lengths from the body centre
    vel, vel_ok = _velocity(rel, point_ok, fps)
    trunk_vel, trunk_ok = _velocity(centre / scale, torso_ok, fps)  # the centre's own movement is the trunk's

    # Fixed-length windows of grid indices (the last ones end at the record's end).
    n = int(max(2, min(round(window_s * fps), grid.size)))
    starts = np.clip(np.round((bounds[:, 0] - grid[0]) * fps).astype(np.int64), 0, grid.size - n)
    idx = starts[:, None] + np.arange(n)[None, :]
    return bounds, Tracks(fps=fps, idx=idx, rel=rel, point_ok=point_ok, vel=vel, vel_ok=vel_ok, torso=torso,
                          torso_ok=torso_ok, centre=centre, scale=scale, up=up, side=side, trunk_vel=trunk_vel,
                          trunk_ok=trunk_ok, times=times, detected=detected, grid=grid)


def window_features(arrays: Mapping[str, np.ndarray], *, window_s: float = WINDOW_S, hop_s: float = HOP_S,
                    frame_size: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features [W, MOTION_DIM] float32 scaled to [-CLIP, CLIP], window times [W, 2] s, valid [W] bool).

    `arrays` holds a record's POSE, POSE_MASK and FRAME_TIMES (ROTATION is used
    when present). `frame_size` (width, height of the processed frame, the
    record's `frame_size`) restores true proportions from MediaPipe's
    normalised x and y; without it x and y count as equal lengths.
    """
    bounds, tracks = body_tracks(arrays, _POINT_JOINTS, window_s=window_s, hop_s=hop_s, frame_size=frame_size)
    n_windows = bounds.shape[0]
    if tracks is None:
        return np.zeros((n_windows, MOTION_DIM), np.float32), bounds.astype(np.float32), np.zeros(n_windows, bool)
    fps, idx, rel, point_ok, vel, vel_ok = tracks.fps, tracks.idx, tracks.rel, tracks.point_ok, tracks.vel, tracks.vel_ok
    torso, torso_ok, centre, scale, up, side = tracks.torso, tracks.torso_ok, tracks.centre, tracks.scale, tracks.up, tracks.side
    trunk_vel, trunk_ok, times, detected, grid = tracks.trunk_vel, tracks.trunk_ok, tracks.times, tracks.detected, tracks.grid
    shoulder_mid = torso[:, :2].mean(axis=1)
    v, m = vel[idx], vel_ok[idx].astype(np.float64)  # [W, n, P, 2], [W, n, P]
    speed = np.linalg.norm(v, axis=-1)
    cover = point_ok[idx].mean(axis=1)  # [W, P]
    seen = cover >= MIN_COVERAGE
    rms = np.sqrt(_masked_mean(speed**2, m))  # [W, P]
    up_w, side_w = up[idx], side[idx]
    v_up = (v * up_w[:, :, None]).sum(axis=-1)  # [W, n, P]
    rel_w = rel[idx]  # [W, n, P, 2]

    raw = np.zeros((n_windows, MOTION_DIM))
    col = {name: i for i, name in enumerate(MOTION_FEATURE_NAMES)}
    have = np.zeros((n_windows, MOTION_DIM), dtype=bool)

    def put(name: str, value: np.ndarray, ok: np.ndarray) -> None:
        raw[:, col[name]] = np.where(ok, value, np.nan)
        have[:, col[name]] = ok

    share, peak = np.zeros((n_windows, 5)), np.zeros((n_windows, 5))
    for p in range(5):
        share[:, p], peak[:, p] = _spectrum(v[:, :, p], m[:, :, p], fps)

    head = seen[:, _HEAD]
    put("head_energy", _log_energy(rms[:, _HEAD]), head)
    put("head_rhythm", share[:, _HEAD], head)
    put("head_freq", peak[:, _HEAD], head)
    head_rel = rel_w[:, :, _HEAD] - ((shoulder_mid[idx] - centre[idx]) / scale)
    offset = np.abs((head_rel * side_w).sum(axis=-1))
    put("head_offset", _masked_mean(offset, point_ok[idx][:, :, _HEAD].astype(float)), head)

    strong_side = np.zeros((n_windows,), dtype=np.int64)  # 0 = left arm is the stronger, 1 = right
    for region, (left, right) in (("arm", (_LW, _RW)), ("leg", (_LA, _RA))):
        both = seen[:, left] & seen[:, right]
        one = seen[:, left] | seen[:, right]
        right_strong = np.where(both, rms[:, right] > rms[:, left], seen[:, right])
        if region == "arm":
            strong_side = right_strong.astype(np.int64)
        s = np.where(right_strong, right, left)
        w = np.where(right_strong, left, right)
        rows = np.arange(n_windows)
        e_s, e_w = rms[rows, s], rms[rows, w]
        put(f"{region}_energy_strong", _log_energy(e_s), one)
        put(f"{region}_energy_weak", _log_energy(e_w), both)
        put(f"{region}_asymmetry", (e_s - e_w) / np.maximum(e_s + e_w, 1e-9), both & (e_s + e_w > ENERGY_FLOOR))
        pair = m[:, :, left] * m[:, :, right]
        put(f"{region}_speed_sync", _masked_corr(speed[:, :, left], speed[:, :, right], pair), both)
        put(f"{region}_velocity_sync", _masked_corr(v_up[:, :, left], v_up[:, :, right], pair), both)
        put(f"{region}_rhythm", share[rows, s], one)
        put(f"{region}_freq", peak[rows, s], one)
        if region == "arm":
            top = (speed[rows, :, s] * m[rows, :, s]).max(axis=1)
            put("arm_jerk", np.log2(np.maximum(top, ENERGY_FLOOR) / np.maximum(e_s, ENERGY_FLOOR)), one & (e_s > ENERGY_FLOOR))

    t_share, t_peak = _spectrum(trunk_vel[idx], trunk_ok[idx].astype(float), fps)
    trunk_seen = torso_ok[idx].mean(axis=1) >= MIN_COVERAGE
    trunk_speed = np.linalg.norm(trunk_vel[idx], axis=-1)
    put("trunk_energy", _log_energy(np.sqrt(_masked_mean(trunk_speed**2, trunk_ok[idx].astype(float)))), trunk_seen)
    put("trunk_rhythm", t_share, trunk_seen)
    put("trunk_freq", t_peak, trunk_seen)

    # Arm posture relative to the shoulder midpoint, along and across the body axis.
    shoulder_rel = (shoulder_mid[idx] - centre[idx]) / scale  # [W, n, 2]
    arms_seen = seen[:, _LW] & seen[:, _RW]
    elev, abd, reach = [], [], []
    for p, shoulder in ((_LW, 0), (_RW, 1)):
        wrist = rel_w[:, :, p] - shoulder_rel
        pm = point_ok[idx][:, :, p].astype(float)
        elev.append(_masked_mean((wrist * up_w).sum(axis=-1), pm))
        abd.append(_masked_mean(np.abs((wrist * side_w).sum(axis=-1)), pm))
        joint_rel = (torso[idx][:, :, shoulder] - centre[idx]) / scale
        reach.append(_masked_mean(np.linalg.norm(rel_w[:, :, p] - joint_rel, axis=-1), pm))
    put("arm_elevation", (elev[0] + elev[1]) / 2, arms_seen)
    put("arm_abduction", (abd[0] + abd[1]) / 2, arms_seen)
    put("arm_posture_asymmetry", np.abs(elev[0] - elev[1]) + np.abs(abd[0] - abd[1]), arms_seen)
    # Tonic: both arms reaching out from the shoulder (0.5 -> 1 torso lengths) while barely moving.
    extension = np.clip((np.minimum(reach[0], reach[1]) - 0.5) / 0.5, 0.0, 1.0)
    stillness = 1.0 / (1.0 + (np.maximum(rms[:, _LW], rms[:, _RW]) / 0.3) ** 2)
    put("tonic_hold", extension * stillness, arms_seen)

    body_ms = (speed**2 * m).sum(axis=(1, 2)) / np.maximum(m.sum(axis=(1, 2)), 1.0)
    put("body_energy", _log_energy(np.sqrt(body_ms)), seen.any(axis=1))
    rows = np.arange(n_windows)
    arm_s = np.where(strong_side == 1, _RW, _LW)
    leg_same = np.where(strong_side == 1, _RA, _LA)
    leg_other = np.where(strong_side == 1, _LA, _RA)
    for name, leg in (("ipsi_sync", leg_same), ("contra_sync", leg_other)):
        pair = m[rows, :, arm_s] * m[rows, :, leg]
        put(name, _masked_corr(speed[rows, :, arm_s], speed[rows, :, leg], pair), seen[rows, arm_s] & seen[rows, leg])
    detected_grid, _ = _resample(times, detected.astype(np.float64), np.isfinite(times), grid, fps)
    put("pose_rate", (detected_grid[idx] > 0.5).mean(axis=1), np.ones(n_windows, bool))
    put("arm_visibility", cover[:, [_LW, _RW]].mean(axis=1), np.ones(n_windows, bool))
    put("leg_visibility", cover[:, [_LA, _RA]].mean(axis=1), np.ones(n_windows, bool))

    valid = trunk_seen
    scaled = np.where(have, scale_features(raw), 0.0)
    scaled[~valid] = 0.0
    return scaled.astype(np.float32), bounds.astype(np.float32), valid


def pool_seizure(feats: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """One vector per seizure [POOLED_DIM]: mean and 90th percentile over valid windows, and the valid share.

    The valid share is scaled like the other rates (0 -> -1, 1 -> +1); a
    seizure without a valid window pools to zeros with valid share -1.
    """
    feats = np.asarray(feats, dtype=np.float64)
    valid = np.asarray(valid).astype(bool)
    if feats.ndim != 2 or feats.shape[1] != MOTION_DIM or valid.shape != (feats.shape[0],):
        raise ValueError(f"pool_seizure needs feats [W, {MOTION_DIM}] and valid [W], got {feats.shape} and {valid.shape}")
    share = 2.0 * valid.mean() - 1.0 if valid.size else -1.0
    if not valid.any():
        return np.concatenate([np.zeros(2 * MOTION_DIM), [share]]).astype(np.float32)
    chosen = np.nan_to_num(feats[valid])
    pooled = np.concatenate([chosen.mean(axis=0), np.percentile(chosen, 90, axis=0), [share]])
    return np.clip(pooled, -CLIP, CLIP).astype(np.float32)
