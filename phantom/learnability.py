"""Is the phantom task learnable but not trivial? Motion statistics, a logistic regression, patient-grouped CV."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from semiofed.phantom.dataset import PlannedVideo

# MediaPipe pose indices of the limbs' distal points.
LIMBS = {"head": (0,), "left_arm": (13, 15), "right_arm": (14, 16), "left_leg": (25, 27), "right_leg": (26, 28)}
FEATURE_NAMES = ("log_energy_head", "log_energy_arm_max", "log_energy_arm_min", "log_energy_leg_max",
                 "log_energy_leg_min", "arm_asymmetry", "leg_asymmetry", "arm_lr_correlation",
                 "dominant_hz", "rhythmic_power_1_5hz", "moving_fraction", "late_early_energy_ratio")


def _speed(points: np.ndarray, fps: float, size: float) -> np.ndarray:
    """Per-frame speed [T-1] of the mean of some points, in body sizes per second (NaN-safe: 0 where missing)."""
    p = np.nanmean(points, axis=1) if points.ndim == 3 else points
    v = np.linalg.norm(np.diff(p, axis=0), axis=-1) * fps / size
    return np.nan_to_num(v, nan=0.0)


def motion_features(pose_2d: np.ndarray, fps: float, onset_s: float, offset_s: float) -> np.ndarray:
    """Motion statistics of the seizure window from 33 pose keypoints [T,33,2] (pixels; NaN rows allowed)."""
    lo, hi = int(onset_s * fps), max(int(offset_s * fps), int(onset_s * fps) + 4)
    seg = pose_2d[lo:hi]
    valid = ~np.isnan(seg).any(axis=(1, 2))
    extent = seg[valid].max(axis=1) - seg[valid].min(axis=1) if valid.any() else np.ones((1, 2))
    size = float(np.median(np.linalg.norm(extent, axis=1))) or 1.0
    speed = {name: _speed(seg[:, list(idx)], fps, size) for name, idx in LIMBS.items()}
    energy = {name: float(np.mean(s ** 2)) + 1e-6 for name, s in speed.items()}
    arms = (energy["left_arm"], energy["right_arm"])
    legs = (energy["left_leg"], energy["right_leg"])
    la, ra = speed["left_arm"], speed["right_arm"]
    corr = float(np.corrcoef(la, ra)[0, 1]) if la.std() > 1e-9 and ra.std() > 1e-9 else 0.0
    total = sum(speed.values())
    centred = total - total.mean()
    power = np.abs(np.fft.rfft(centred * np.hanning(len(centred)))) ** 2
    freqs = np.fft.rfftfreq(len(centred), 1.0 / fps)
    band = (freqs >= 0.5) & (freqs <= min(6.0, fps / 2))
    dominant = float(freqs[band][np.argmax(power[band])]) if band.any() else 0.0
    rhythmic = float(power[(freqs >= 1) & (freqs <= 5)].sum() / (power[freqs > 0.2].sum() + 1e-12))
    moving = float(np.mean(total > 0.2))
    half = len(total) // 2
    late_early = float(np.log((np.mean(total[half:] ** 2) + 1e-6) / (np.mean(total[:half] ** 2) + 1e-6)))
    return np.array([
        np.log(energy["head"]), np.log(max(arms)), np.log(min(arms)), np.log(max(legs)), np.log(min(legs)),
        abs(arms[0] - arms[1]) / sum(arms), abs(legs[0] - legs[1]) / sum(legs), corr, dominant, rhythmic, moving,
        late_early,
    ])


def jitter_keypoints(pose_2d: np.ndarray, rng: np.random.Generator, fraction: float = 0.01) -> np.ndarray:
    """Add detector-like noise (Gaussian, `fraction` of body size per coordinate) to ground-truth keypoints."""
    extent = np.nanmax(pose_2d, axis=1) - np.nanmin(pose_2d, axis=1)
    size = np.linalg.norm(extent, axis=1)[:, None, None]
    return pose_2d + rng.standard_normal(pose_2d.shape) * fraction * size


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 500) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """Fit an L2-regularised logistic regression by gradient descent on standardised features."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = (x - mean) / std
    w, b = np.zeros(x.shape[1]), 0.0
    pos = max(y.mean(), 1e-3)
    sample_w = np.where(y == 1, 0.5 / pos, 0.5 / max(1 - pos, 1e-3))  # balanced classes
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = (p - y) * sample_w
        w -= 0.5 * (z.T @ g / len(y) + l2 * w / len(y))
        b -= 0.5 * g.mean()
    return w, b, mean, std


def predict_logistic(model: tuple[np.ndarray, float, np.ndarray, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Predicted class (0/1) of a fitted logistic regression."""
    w, b, mean, std = model
    return (((x - mean) / std) @ w + b > 0).astype(int)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean of the per-class recalls (chance = 0.5 for two classes)."""
    return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))


@dataclass(frozen=True)
class CVResult:
    """Patient-grouped cross-validated balanced accuracy."""

    balanced_accuracy: float
    folds: int
    samples: int


def grouped_cv(x: np.ndarray, y: np.ndarray, groups: np.ndarray, folds: int = 5, seed: int = 0) -> CVResult:
    """Cross-validate the logistic regression with no patient in both train and test."""
    x = np.asarray(x, float).reshape(len(y), -1)
    unique = np.unique(groups)
    order = np.random.default_rng(seed).permutation(len(unique))
    fold_of = {g: k % folds for k, g in zip(range(len(unique)), unique[order])}
    fold = np.array([fold_of[g] for g in groups])
    pred = np.zeros(len(y), dtype=int)
    for k in range(folds):
        test = fold == k
        if not test.any() or len(np.unique(y[~test])) < 2:
            continue
        pred[test] = predict_logistic(fit_logistic(x[~test], y[~test]), x[test])
    return CVResult(balanced_accuracy(y, pred), folds, len(y))


def cohort_features(videos: "Sequence[PlannedVideo]", rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Simulate a planned cohort: motion features of jittered ground-truth pose, log duration, TCS label, patient."""
    from semiofed.phantom.episode import simulate

    x, duration, y, groups = [], [], [], []
    for video in videos:
        plan = video.spec.plan
        pose = jitter_keypoints(simulate(video.spec).joints_2d[:, :33], rng)
        x.append(motion_features(pose, video.spec.fps, plan.onset_s, plan.offset_s))
        duration.append(np.log(plan.offset_s - plan.onset_s))
        y.append(int(plan.label == "TCS"))
        groups.append(video.spec.patient_id)
    return np.array(x), np.array(duration), np.array(y), np.array(groups)
