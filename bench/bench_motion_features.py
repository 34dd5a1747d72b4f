"""FOS vs TCS from the motion descriptors (common/records/motion.py) vs the snippet keypoint features, non-DP and DP.

Usage: python bench/bench_motion_features.py --root /tmp/semiofed-bench/motion-cohort [--seeds 0 1 --folds 5]

Data: a phantom cohort of prepared records (bench/phantom_cohort.py; real
MediaPipe + I3D). Every setting runs patient-grouped k-fold cross-validation
(common/learning/metrics.patient_group_kfold) for each split seed; the test
predictions of all folds are pooled (every patient tested once) into balanced
accuracy (threshold 0.5, no calibration) and AUROC. Settings, fixed before
any run and not tuned on the results:

  a  linear head on the pooled motion descriptors, non-DP (L2 logistic regression)
  b  the same head, patient-level DP-SGD (project Trainer) at epsilon 3 and 8; b' the window means only (32-d)
  c  a GRU (hidden 6, <1k parameters, built from nn.Linear) over the window sequence, non-DP and epsilon 8
  d  the same linear head on the 453-d snippet keypoint features (features.py) averaged over the seizure;
     non-DP with the training folds' z-scoring (its best case), DP at epsilon 8 on the raw values

DP: Poisson sampling of patients, per-patient clipping C = 1, sigma from the
project's PRV accountant for one fold's training run at delta 1e-5.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from phantom_cohort import BENCH_DIR  # noqa: E402

from semiofed.client.site import open_site  # noqa: E402
from semiofed.client.training.local import load_site_records  # noqa: E402
from semiofed.common.learning.metrics import auroc, patient_group_kfold  # noqa: E402
from semiofed.common.learning.trainer import Patient, Seizure, TrainConfig, Trainer, predict_logits  # noqa: E402
from semiofed.common.privacy.accountant import SiteAccountant  # noqa: E402
from semiofed.common.privacy.policy import PrivacyPolicy  # noqa: E402
from semiofed.common.records import motion  # noqa: E402
from semiofed.common.records.features import keypoint_snippet_features  # noqa: E402

log = logging.getLogger("bench_motion_features")

LABELS = ("FOS", "TCS")
DELTA = 1e-5
# Fixed a priori (not tuned on the results): the linear head and the GRU share them.
LINEAR_L2 = 1e-2  # non-DP logistic regression ridge on the mean loss
DP_BATCH = 16  # expected patients per step (q = 16 / ~32 training patients)
DP_EPOCHS = 40
DP_LR = 0.05
GRU_HIDDEN = 6
GRU_SEGMENTS = 12  # windows sampled per seizure per training step (Beta jitter); prediction uses all
GRU_EPOCHS = 60
GRU_LR = 0.02


@dataclass
class Item:
    """One seizure: pooled motion vector, window sequence, pooled snippet keypoints, label, patient."""

    patient: str
    label: int
    pooled: np.ndarray
    windows: np.ndarray
    keypoints: np.ndarray
    record_id: str


# ---------------------------------------------------------------- models

class LinearHead(nn.Module):
    """Logistic regression on a seizure vector; inputs [..., n, D] are averaged over n first."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, 2)
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.fc(x.mean(dim=-2)), None


class TinyGRU(nn.Module):
    """A GRU from two nn.Linears (so the project's per-patient gradients apply), mean-pooled, linear read-out."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(dim, 3 * hidden)
        self.hh = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lead, (t, d) = x.shape[:-2], x.shape[-2:]
        flat = x.reshape(-1, t, d)
        gates_in = self.ih(flat)
        h = flat.new_zeros(flat.shape[0], self.hidden)
        outs = []
        for step in range(t):
            gi = gates_in[:, step]
            gh = self.hh(h)
            r = torch.sigmoid(gi[:, : self.hidden] + gh[:, : self.hidden])
            z = torch.sigmoid(gi[:, self.hidden : 2 * self.hidden] + gh[:, self.hidden : 2 * self.hidden])
            n = torch.tanh(gi[:, 2 * self.hidden :] + r * gh[:, 2 * self.hidden :])
            h = (1 - z) * n + z * h
            outs.append(h)
        seq = torch.stack(outs, dim=1)
        logits = self.out(seq.mean(dim=1))
        return logits.reshape(*lead, 2), self.out(seq).reshape(*lead, t, 2)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- training

def logistic_fit(x: np.ndarray, y: np.ndarray, *, l2: float = LINEAR_L2, iters: int = 50) -> np.ndarray:
    """Class-balanced L2 logistic regression by Newton's method; weights [D+1] (bias last)."""
    xb = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    counts = np.bincount(y, minlength=2).astype(float)
    sw = (len(y) / (2 * np.maximum(counts, 1)))[y]
    w = np.zeros(xb.shape[1])
    reg = np.full(xb.shape[1], l2)
    reg[-1] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (sw * (p - y)) / len(y) + reg * w
        hess = (xb * (sw * p * (1 - p))[:, None]).T @ xb / len(y) + np.diag(reg + 1e-9)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w


def to_patients(items: Sequence[Item], inputs: Callable[[Item], np.ndarray]) -> list[Patient]:
    by: dict[str, list[Seizure]] = {}
    for it in items:
        by.setdefault(it.patient, []).append(Seizure(inputs(it).astype(np.float32), it.label, it.record_id))
    return [Patient(p, tuple(s)) for p, s in sorted(by.items())]


class NoiseTable:
    """Sigma for (epsilon, q, steps) from the project's PRV accountant (a throwaway, empty accountant)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory()
        self._acc = SiteAccountant(Path(self._dir.name), PrivacyPolicy(max_epsilon=1000.0, target_delta=DELTA,
                                                                       min_noise_multiplier=0.3))
        self._cache: dict[tuple[float, float, int], float] = {}

    def sigma(self, epsilon: float, q: float, steps: int) -> float:
        key = (epsilon, round(q, 6), steps)
        if key not in self._cache:
            self._cache[key] = self._acc.noise_for(target_epsilon=epsilon, sample_rate=q, steps=steps)
        return self._cache[key]


def torch_fit_predict(model: nn.Module, train: list[Patient], test: list[Seizure], *, epsilon: float | None,
                      epochs: int, lr: float, n_segments: int, seed: int, noise: NoiseTable) -> tuple[np.ndarray, dict]:
    """Train with the project's Trainer (DP when epsilon is set); P(TCS) for every test seizure, in order."""
    n = len(train)
    # the ridge of (a) as weight decay; under DP it is post-processing (it does not touch the data)
    base = TrainConfig(epochs=epochs, batch_patients=DP_BATCH, lr=lr, weight_decay=LINEAR_L2, dp=epsilon is not None,
                       clipping_norm=1.0, beta_gamma=2.0, seed=seed)
    info: dict = {}
    if epsilon is not None:
        q, steps = base.sample_rate(n), base.steps(n)
        sigma = noise.sigma(epsilon, q, steps)
        base = TrainConfig(**{**base.to_dict(), "noise_multiplier": sigma})
        info = {"sigma": round(sigma, 3), "q": round(q, 3), "steps": steps}
    trainer = Trainer(model, base, n_segments=n_segments)
    try:
        trainer.fit(train)
    finally:
        trainer.close()
    logits = predict_logits(model, test, n_segments=None)
    z = logits - logits.max(axis=1, keepdims=True)
    prob = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return prob[:, 1], info


# ---------------------------------------------------------------- evaluation

def balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    pred = (p >= 0.5).astype(int)
    return float(np.mean([np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]))


def cross_validate(items: Sequence[Item], folds: int, seed: int,
                   fit_predict: Callable[[list[Item], list[Item], int], tuple[np.ndarray, dict]]) -> dict:
    """Pooled out-of-fold P(TCS) -> balanced accuracy and AUROC for one split seed."""
    patients = sorted({it.patient for it in items})
    majority = {p: int(round(np.mean([it.label for it in items if it.patient == p]))) for p in patients}
    splits = patient_group_kfold(patients, [majority[p] for p in patients], folds, seed=seed)
    ys, ps, infos = [], [], []
    for k, test_ids in enumerate(splits):
        test_set = set(test_ids)
        train = [it for it in items if it.patient not in test_set]
        test = [it for it in items if it.patient in test_set]
        prob, info = fit_predict(train, test, seed * 100 + k)
        ys.append(np.array([it.label for it in test]))
        ps.append(prob)
        infos.append(info)
    y, p = np.concatenate(ys), np.concatenate(ps)
    return {"balanced_accuracy": balanced_accuracy(y, p), "auroc": float(auroc(y, np.stack([1 - p, p], axis=1))),
            "dp": infos[0] if infos and infos[0] else None}


def settings(noise: NoiseTable) -> dict[str, Callable[[list[Item], list[Item], int], tuple[np.ndarray, dict]]]:
    """Every benchmark row: name -> fit_predict(train items, test items, seed)."""

    def linear_numpy(feature: Callable[[Item], np.ndarray], zscore: bool):
        def run(train: list[Item], test: list[Item], seed: int) -> tuple[np.ndarray, dict]:
            xtr = np.stack([feature(it) for it in train]).astype(np.float64)
            xte = np.stack([feature(it) for it in test]).astype(np.float64)
            if zscore:  # fitted on the training folds: non-DP comparison only
                mu, sd = xtr.mean(0), xtr.std(0) + 1e-6
                xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
            w = logistic_fit(xtr, np.array([it.label for it in train]))
            return 1 / (1 + np.exp(-(xte @ w[:-1] + w[-1]))), {}
        return run

    def torch_model(build: Callable[[], nn.Module], inputs: Callable[[Item], np.ndarray], epsilon: float | None,
                    epochs: int, lr: float, n_segments: int):
        def run(train: list[Item], test: list[Item], seed: int) -> tuple[np.ndarray, dict]:
            torch.manual_seed(seed)
            seizures = [Seizure(inputs(it).astype(np.float32), it.label, it.record_id) for it in test]
            return torch_fit_predict(build(), to_patients(train, inputs), seizures, epsilon=epsilon,
                                     epochs=epochs, lr=lr, n_segments=n_segments, seed=seed, noise=noise)
        return run

    pooled = lambda it: it.pooled  # noqa: E731
    pooled_row = lambda it: it.pooled[None]  # noqa: E731
    windows = lambda it: it.windows  # noqa: E731
    kp_row = lambda it: it.keypoints[None]  # noqa: E731
    # the window means and the valid share only: half the dimensions, so about 1/sqrt(2) of the DP noise norm
    means = np.r_[np.arange(motion.MOTION_DIM), motion.POOLED_DIM - 1]
    means_row = lambda it: it.pooled[means][None]  # noqa: E731
    d_motion, d_kp = motion.POOLED_DIM, 453
    rows = {
        "a  motion pooled, logistic, non-DP": linear_numpy(pooled, False),
        "a' motion pooled, linear head (Trainer), non-DP": torch_model(lambda: LinearHead(d_motion), pooled_row, None, DP_EPOCHS, DP_LR, 1),
        "b  motion pooled, linear head, DP eps 3": torch_model(lambda: LinearHead(d_motion), pooled_row, 3.0, DP_EPOCHS, DP_LR, 1),
        "b  motion pooled, linear head, DP eps 8": torch_model(lambda: LinearHead(d_motion), pooled_row, 8.0, DP_EPOCHS, DP_LR, 1),
        "b' motion means only (32-d), linear head, DP eps 8": torch_model(lambda: LinearHead(len(means)), means_row, 8.0, DP_EPOCHS, DP_LR, 1),
        "c  motion windows, GRU-6, non-DP": torch_model(lambda: TinyGRU(motion.MOTION_DIM, GRU_HIDDEN), windows, None, GRU_EPOCHS, GRU_LR, GRU_SEGMENTS),
        "c  motion windows, GRU-6, DP eps 8": torch_model(lambda: TinyGRU(motion.MOTION_DIM, GRU_HIDDEN), windows, 8.0, DP_EPOCHS, DP_LR, GRU_SEGMENTS),
        "d  snippet keypoints 453-d pooled, logistic (z-scored), non-DP": linear_numpy(lambda it: it.keypoints, True),
        "d  snippet keypoints 453-d pooled, linear head, DP eps 8": torch_model(lambda: LinearHead(d_kp), kp_row, 8.0, DP_EPOCHS, DP_LR, 1),
    }
    return rows


def load_items(site_dir: Path) -> tuple[list[Item], dict]:
    records = load_site_records(open_site(site_dir), LABELS)
    items, seconds, durations = [], [], []
    for r in records:
        started = time.perf_counter()
        feats, _, valid = motion.window_features(r.arrays, frame_size=r.frame_size)
        seconds.append(time.perf_counter() - started)
        durations.append(r.duration_s)
        kp = keypoint_snippet_features(r).mean(axis=0)
        items.append(Item(r.patient_pseudonym, LABELS.index(r.label), motion.pool_seizure(feats, valid), feats, kp, r.record_id))
    timing = {"records": len(records), "median_ms_per_record": round(1000 * float(np.median(seconds)), 1),
              "median_record_s": round(float(np.median(durations)), 1),
              "ms_per_video_minute": round(1000 * sum(seconds) / max(sum(durations) / 60, 1e-9), 1)}
    return items, timing


def univariate(items: Sequence[Item]) -> list[tuple[str, float]]:
    """AUROC of each pooled feature alone (descriptive; no model is chosen by it)."""
    y = np.array([it.label for it in items])
    x = np.stack([it.pooled for it in items])
    out = []
    for j, name in enumerate(motion.POOLED_FEATURE_NAMES):
        a = auroc(y, np.stack([-x[:, j], x[:, j]], axis=1))
        out.append((name, float(a)))
    return sorted(out, key=lambda t: -abs(t[1] - 0.5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=BENCH_DIR / "motion-cohort")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--only", default="", help="run only the rows whose name contains this text")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    items, timing = load_items(args.root / "site")
    log.info("%d seizures of %d patients (%d TCS); window_features %s", len(items), len({i.patient for i in items}),
             sum(i.label for i in items), timing)
    noise = NoiseTable()
    results: dict[str, dict] = {}
    for name, run in settings(noise).items():
        if args.only and args.only not in name:
            continue
        started = time.monotonic()
        per_seed = [cross_validate(items, args.folds, seed, run) for seed in args.seeds]
        ba = [r["balanced_accuracy"] for r in per_seed]
        au = [r["auroc"] for r in per_seed]
        results[name] = {"per_seed": per_seed, "balanced_accuracy_mean": float(np.mean(ba)),
                         "balanced_accuracy_spread": float(np.ptp(ba)), "auroc_mean": float(np.mean(au)),
                         "auroc_spread": float(np.ptp(au)), "seconds": round(time.monotonic() - started, 1)}
        log.info("%-62s BA %s  AUROC %s  (%.0f s) %s", name, " ".join(f"{v:.3f}" for v in ba),
                 " ".join(f"{v:.3f}" for v in au), time.monotonic() - started, per_seed[0]["dp"] or "")
    params = {"linear_motion": parameter_count(LinearHead(motion.POOLED_DIM)), "linear_keypoints": parameter_count(LinearHead(453)),
              "gru": parameter_count(TinyGRU(motion.MOTION_DIM, GRU_HIDDEN))}
    report = {"timing": timing, "parameters": params, "seeds": args.seeds, "folds": args.folds, "results": results,
              "univariate_auroc_top": univariate(items)[:12]}
    text = json.dumps(report, indent=1)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
