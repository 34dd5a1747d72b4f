"""Cost of privacy: time and peak memory of one DP training step vs a non-DP step of the same model.

Shape from issue 3: 16 patients per batch (one seizure each, and a 3-seizure
variant), 16 segments, 1024-d STCNN features, BLSTM hidden 64; 2 CPU threads.
Each (model, mode) runs in a fresh subprocess so peak RSS is its own.
Prints a markdown table. Usage: python bench/bench_dp_step.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

VARIANTS = {
    # name: (classifier kwargs, engine)
    "nn.LSTM (cuDNN/mkldnn op), reference": ({"temporal": "torch_lstm"}, None),
    "BLSTM 1024->64 (GESTURES shape)": ({"temporal": "blstm", "embed_dim": 0}, "ours"),
    "BLSTM 1024->64, Opacus GradSampleModule hooks": ({"temporal": "blstm", "embed_dim": 0}, "opacus"),
    "embed 64 + BLSTM 64": ({"temporal": "blstm", "embed_dim": 64}, "ours"),
    "embed 64 + temporal conv 64": ({"temporal": "tconv", "embed_dim": 64}, "ours"),
    "embed 64 + attention pooling 64": ({"temporal": "attn", "embed_dim": 64}, "ours"),
}


def _child(spec: dict) -> dict:
    import torch
    from torch import nn

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    from semiofed.common.learning.classifier import ClassifierConfig, build_classifier
    from semiofed.common.learning.trainer import patient_loss
    from semiofed.common.learning.per_sample import PerPatientGradients, clip_and_noise

    p, k = spec["patients"], spec["seizures"]
    kwargs = dict(spec["kwargs"])
    x = torch.randn(p, k, 16, 1024)
    y = torch.randint(0, 2, (p, k))
    mask = torch.ones(p, k)
    if kwargs.get("temporal") == "torch_lstm":
        class Ref(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.lstm = nn.LSTM(1024, 64, batch_first=True, bidirectional=True)
                self.head = nn.Linear(128, 2)

            def forward(self, x):
                h, _ = self.lstm(x.reshape(-1, *x.shape[-2:]))
                logits = self.head(h).mean(1)
                return logits.reshape(*x.shape[:-2], 2), None
        model = Ref()
    else:
        model = build_classifier(ClassifierConfig(streams=("stcnn",), hidden=64, **kwargs))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    params = [q for q in model.parameters() if q.requires_grad]

    if spec["mode"] == "nodp":
        def step():
            opt.zero_grad(set_to_none=True)
            (patient_loss(model, x, y, mask, None) / mask.sum()).backward()
            opt.step()
    elif spec["engine"] == "ours":
        grads = PerPatientGradients(model)

        def step():
            per = grads.compute(lambda m: patient_loss(m, x, y, mask, None), p)
            noisy, _ = clip_and_noise(per, clipping_norm=1.0, noise_multiplier=1.0, expected_batch_size=float(p))
            for q, g in zip(params, noisy):
                q.grad = g
            opt.step()
    else:  # Opacus hooks, per seizure (k must be 1 for per-patient semantics)
        import logging
        root = logging.getLogger(); handlers = list(root.handlers)
        from opacus import GradSampleModule
        root.handlers[:] = handlers
        wrapped = GradSampleModule(model, loss_reduction="sum")

        def step():
            wrapped.zero_grad(set_to_none=True)
            logits, _ = wrapped(x.reshape(p * k, 16, 1024))
            nn.functional.cross_entropy(logits, y.reshape(-1), reduction="sum").backward()
            per = [q.grad_sample for q in params]
            noisy, _ = clip_and_noise(per, clipping_norm=1.0, noise_multiplier=1.0, expected_batch_size=float(p))
            for q, g in zip(params, noisy):
                q.grad = g
                q.grad_sample = None
            opt.step()

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        step()
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"median_ms": statistics.median(times), "min_ms": min(times), "peak_extra_mib": (peak - base) / 1024}


def run(name: str, mode: str, args: argparse.Namespace, seizures: int) -> dict:
    kwargs, engine = VARIANTS[name]
    spec = {"kwargs": kwargs, "engine": engine, "mode": mode, "threads": args.threads, "repeats": args.repeats,
            "patients": args.patients, "seizures": seizures}
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patients", type=int, default=16)
    parser.add_argument("--child", default=None)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    print(f"batch {args.patients} patients, 16 segments, 1024-d, hidden 64, {args.threads} threads, "
          f"median of {args.repeats} steps (min in brackets); memory = peak RSS growth over setup\n")
    print("| model | seizures/patient | non-DP ms | DP ms | DP / non-DP | non-DP MiB | DP MiB |")
    print("|---|---|---|---|---|---|---|")
    for name, (kwargs, engine) in VARIANTS.items():
        for seizures in (1, 3):
            if engine == "opacus" and seizures > 1:
                continue  # Opacus's sample is the seizure; per patient only with one seizure each
            base = run(name, "nodp", args, seizures)
            if engine is None:
                print(f"| {name} | {seizures} | {base['median_ms']:.1f} ({base['min_ms']:.1f}) | - | - | "
                      f"{base['peak_extra_mib']:.0f} | - |")
                continue
            dp = run(name, "dp", args, seizures)
            print(f"| {name} | {seizures} | {base['median_ms']:.1f} ({base['min_ms']:.1f}) | "
                  f"{dp['median_ms']:.1f} ({dp['min_ms']:.1f}) | {dp['median_ms'] / base['median_ms']:.2f}x | "
                  f"{base['peak_extra_mib']:.0f} | {dp['peak_extra_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
