"""Utility of DP: accuracy, balanced accuracy and AUROC, non-DP vs DP at epsilon 1, 3, 8 (delta 1e-5).

Streams STCNN-only vs keypoints-only vs both (attention-pooling model), and
BLSTM vs attention pooling on both streams. Data: synthetic structured
records in the record schema (tests/dp_synthetic.py), NOT the phantom videos
(rendering and de-identifying them does not fit a 2-core CPU run). Patient-
grouped folds; each row averages the test folds listed. Prints markdown.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from dp_synthetic import populate  # noqa: E402

from semiofed.client.local_training import group_patients, split_patients  # noqa: E402
from semiofed.common.calibration import fit_temperature  # noqa: E402
from semiofed.common.classifier import ClassifierConfig, build_classifier  # noqa: E402
from semiofed.common.dp_training import TrainConfig, Trainer, predict_logits  # noqa: E402
from semiofed.common.metrics import classification_report, softmax  # noqa: E402
from semiofed.common.policy import PrivacyPolicy  # noqa: E402
from semiofed.common.privacy import SiteAccountant  # noqa: E402

LABELS = ("FOS", "TCS")
DELTA = 1e-5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-patients", type=int, default=8)
    parser.add_argument("--test-folds", default="0,1,2")
    parser.add_argument("--signal", type=float, default=0.35)
    parser.add_argument("--dim", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(2)
    folds = [int(f) for f in args.test_folds.split(",")]
    tmp = Path(tempfile.mkdtemp())
    records = populate(tmp, n_patients=args.patients, seizures=(1, 2, 3, 5), dim=args.dim, n_snippets=24,
                       signal=args.signal, seed=11)
    n_train = None
    rows = []
    configs = [(("stcnn",), "attn"), (("keypoints",), "attn"), (("stcnn", "keypoints"), "attn"),
               (("stcnn", "keypoints"), "blstm")]
    sigmas: dict[float, float] = {}
    started = time.time()
    for streams, temporal in configs:
        patients = group_patients(records, LABELS, streams)
        for eps in (None, 1.0, 3.0, 8.0):
            scores = []
            for test_fold in folds:
                train, val, test = split_patients(patients, 5, test_fold, seed=0)
                n_train = len(train)
                cfg = TrainConfig(epochs=args.epochs, batch_patients=args.batch_patients, dp=eps is not None,
                                  lr=3e-3, class_weights=None, seed=test_fold)
                if eps is not None:
                    if eps not in sigmas:  # same q and steps for every fold (equal fold sizes)
                        acc = SiteAccountant(tmp / "acct", PrivacyPolicy(max_epsilon=eps, min_noise_multiplier=0.3))
                        sigmas[eps] = acc.noise_for(target_epsilon=eps, sample_rate=cfg.sample_rate(n_train),
                                                    steps=cfg.steps(n_train))
                    cfg = replace(cfg, noise_multiplier=sigmas[eps])
                mcfg = ClassifierConfig(labels=LABELS, streams=streams, temporal=temporal, stcnn_dim=args.dim,
                                        embed_dim=64, hidden=64, n_segments=16)
                model = build_classifier(mcfg, seed=test_fold)
                trainer = Trainer(model, cfg, n_segments=16)
                trainer.fit(train)
                trainer.close()
                vs = [s for p in val for s in p.seizures]
                ts = [s for p in test for s in p.seizures]
                t = fit_temperature(predict_logits(model, vs, n_segments=16), np.array([s.label for s in vs]))
                scores.append(classification_report([s.label for s in ts], softmax(predict_logits(model, ts, n_segments=16), t)))
            mean = {k: float(np.mean([s[k] for s in scores])) for k in ("accuracy", "balanced_accuracy", "auroc", "ece")}
            rows.append((temporal, "+".join(streams), "non-DP" if eps is None else f"{eps:g}",
                         "-" if eps is None else f"{sigmas[eps]:.2f}", mean))
            print(f"# {rows[-1][:4]} {mean} ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)
    print(f"synthetic records: {args.patients} patients, {len(records)} seizures (1-5 per patient), "
          f"{args.dim}-d STCNN stand-in, signal {args.signal}; {args.epochs} epochs, expected {args.batch_patients} "
          f"patients/step (q = {args.batch_patients / n_train:.3f}), delta {DELTA:g}; test folds {folds} of 5\n")
    print("| temporal | streams | epsilon | sigma | accuracy | balanced acc. | AUROC | ECE |")
    print("|---|---|---|---|---|---|---|---|")
    for temporal, streams, eps, sigma, m in rows:
        print(f"| {temporal} | {streams} | {eps} | {sigma} | {m['accuracy']:.3f} | {m['balanced_accuracy']:.3f} | "
              f"{m['auroc']:.3f} | {m['ece']:.3f} |")


if __name__ == "__main__":
    main()
