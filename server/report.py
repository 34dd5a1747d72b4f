"""The demo's report: report.json (everything measured) and a self-contained report.html (inline SVG plots)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from semiofed.common.reporting import html as H
from semiofed.common.files import write_bytes_atomic

REPORT_JSON, REPORT_HTML = "report.json", "report.html"
METRICS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"), ("ece", "ECE"))

# Marks the page once the browser has laid out every plot (read by the headless-Chromium test).
_CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var svgs = document.querySelectorAll('figure svg'), ok = 0;
  svgs.forEach(function (s) { var b = s.getBBox(); if (b.width > 10 && b.height > 10 && s.querySelector('path')) ok++; });
  document.body.setAttribute('data-plots', ok + '/' + svgs.length);
});
</script>"""


def _figure(width: float = 6.4, height: float = 3.4) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def rounds_figure(run: dict[str, Any]) -> Any:
    """Balanced accuracy and accuracy of the global model per evaluated round, each site and pooled, as read from
    the sites' evaluation releases (noisy under a site's default policy: common/federation/evaluation.py)."""
    fig = _figure(8, 3.4)
    axes = fig.subplots(1, 2)
    rounds = [r for r in run["rounds"] if r.get("evaluate")]
    sites = sorted({s for r in rounds for s in r["evaluate"]})
    for ax, key, title in ((axes[0], "balanced_accuracy", "balanced accuracy"), (axes[1], "accuracy", "accuracy")):
        for site in sites:
            xs = [r["round"] for r in rounds if site in r["evaluate"]]
            ys = [r["evaluate"][site].get(key, math.nan) for r in rounds if site in r["evaluate"]]
            ax.plot(xs, [y if y is not None and y >= 0 else math.nan for y in ys], marker="o", label=site)
        ax.plot([r["round"] for r in rounds], [r["aggregate"].get(key, math.nan) for r in rounds], "k--", marker="s",
                label="all sites")
        ax.set(title=f"{title} (sites' DP releases)", xlabel="round", ylim=(0, 1.05), xticks=[r["round"] for r in rounds])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    return fig


def epsilon_figure(audit: dict[str, Any]) -> Any:
    """Cumulative epsilon per site (from its verified ledger) against its budget."""
    fig = _figure()
    ax = fig.subplots()
    for i, (site, a) in enumerate(sorted(audit.items())):
        eps = [0.0] + [e["epsilon_cumulative"] for e in a["epsilon"]]
        line, = ax.step(range(len(eps)), eps, where="post", marker="o", label=f"{site} ({a['entries']} releases)")
        ax.axhline(a["epsilon_max"], color=line.get_color(), linestyle=":", alpha=0.8)
    ax.set(title="privacy spent per site (dotted: the site's budget)", xlabel="DP release (ledger entry)", ylabel="cumulative epsilon")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def confusion_figure(report: dict[str, Any], labels: list[str]) -> Any:
    """The federated model's confusion matrix over every site's held-out patients."""
    cm = np.asarray(report["confusion_matrix"])
    fig = _figure(3.8, 3.4)
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(int(v)), ha="center", va="center", color="black", fontsize=12)
    ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xticklabels=labels, yticklabels=labels,
           xlabel="predicted", ylabel="true", title="federated model, held-out patients")
    return fig


def calibration_figure(y: list[int], p: list[list[float]], bins: int = 5) -> Any:
    """Reliability diagram: confidence of the predicted class against how often it is right."""
    y_arr, probs = np.asarray(y), np.asarray(p)
    conf, right = probs.max(axis=1), probs.argmax(axis=1) == y_arr
    edges = np.linspace(0.5 if probs.shape[1] == 2 else 0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    fig = _figure(3.8, 3.4)
    ax = fig.subplots()
    ax.plot([edges[0], 1], [edges[0], 1], "k:", label="perfect calibration")
    xs = [conf[idx == b].mean() for b in range(bins) if (idx == b).any()]
    ys = [right[idx == b].mean() for b in range(bins) if (idx == b).any()]
    ns = [int((idx == b).sum()) for b in range(bins) if (idx == b).any()]
    ax.plot(xs, ys, marker="o", label="federated model")
    for x, yv, n in zip(xs, ys, ns):
        ax.annotate(str(n), (x, yv), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="confidence", ylabel="accuracy", title="calibration (n per bin)", ylim=(0, 1.05))
    ax.legend(fontsize=8)
    return fig


def timeline_figure(t: dict[str, Any]) -> Any:
    """One held-out seizure: per-snippet P(TCS) over time, with the true onset and generalisation."""
    fig = _figure(8, 3.0)
    ax = fig.subplots()
    ax.plot(t["times"], t["p_tcs"], marker=".", label="P(TCS) per snippet")
    ax.axhline(0.5, color="grey", linestyle=":")
    if t.get("onset_s") is not None:
        ax.axvline(t["onset_s"], color="tab:green", label="true onset")
    if t.get("generalization_s") is not None:
        ax.axvline(t["generalization_s"], color="tab:red", label="true generalisation")
    if t.get("estimated_generalisation_s") is not None:
        ax.axvline(t["estimated_generalisation_s"], color="tab:red", linestyle="--", label="estimated generalisation")
    ax.set(xlabel="time (s)", ylabel="P(TCS)", ylim=(0, 1.02), title=f"{t['site']} / {t['record_id']} (true: {t['label']})")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def _pooled_local(local: dict[str, Any]) -> dict[str, float]:
    """Local-only models, each on its own site's test patients, averaged weighted by test seizures."""
    n = {s: v["metrics"].get("n_seizures", 0) for s, v in local.items()}
    total = sum(n.values()) or 1
    out = {}
    for key, _ in METRICS:
        values = [(v["metrics"].get(key), n[s]) for s, v in local.items()]
        values = [(x, w) for x, w in values if isinstance(x, float) and math.isfinite(x)]
        out[key] = sum(x * w for x, w in values) / max(sum(w for _, w in values), 1) if values else math.nan
    out["n_seizures"] = total
    return out


SMALL_TEST_SET = 20  # held-out seizures below which the figures say little about the classifier


def small_test_set_note(n: int) -> str:
    """What to make of figures on very few held-out seizures (the quick demo)."""
    return (f"Only {n} held-out seizures: these figures show the pipeline working end to end, not how well the "
            "classifier performs (one seizure more or less moves accuracy by several points). Run the demo without "
            "--quick, or see docs/benchmarks.md for cross-validated figures.")


def _interval(metrics: dict[str, Any], key: str) -> str:
    low, high = (metrics.get("ci95") or {}).get(key, (math.nan, math.nan))
    return f"{low:.2f}-{high:.2f}" if math.isfinite(low) and math.isfinite(high) else "-"


def comparison_rows(report: dict[str, Any]) -> list[list[Any]]:
    """Local-only vs the public model alone (when the run started from it) vs federated vs centralised, on the same
    held-out patients, with 95% bootstrap intervals."""
    local = report.get("local_only_pooled", {}).get("pooled") or _pooled_local(report["local_only"])
    rows = []
    public = (report.get("public_only") or {}).get("pooled")
    for name, privacy, metrics in (
        ("local-only (each site alone)", "DP per site", local),
        *([("public reference only (no site data)", "public data", public)] if public else []),
        ("federated (SecAgg+)" + (", from the public model" if public else ""), "DP per site", report["federated"]["pooled"]),
        ("centralised (pooled data)", "NOT private", report["centralised"]["pooled"]),
    ):
        rows.append([name, privacy, *[metrics.get(key, math.nan) for key, _ in METRICS],
                     _interval(metrics, "balanced_accuracy"), _interval(metrics, "auroc")])
    return rows


def federation_gain_lines(report: dict[str, Any]) -> list[str]:
    """One sentence per comparison: what the federated model adds over each site alone and over the public model
    alone, on the same held-out seizures, with a paired bootstrap interval (an interval through 0: no gain shown)."""
    names = {"over_local_only": "each site alone (local-only DP)", "over_public_only": "the public model alone"}
    lines = []
    for key, what in names.items():
        gain = (report.get("federation_gain") or {}).get(key)
        if not gain:
            continue
        parts = []
        for metric, title in (("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC")):
            d = gain[metric]
            low, high = d["ci95"]
            verdict = "" if not (math.isfinite(low) and math.isfinite(high)) else \
                (" (a gain)" if low > 0 else " (a loss)" if high < 0 else " (no difference shown)")
            parts.append(f"{title} {d['difference']:+.2f} (95% CI {low:+.2f} to {high:+.2f}){verdict}")
        lines.append(f"Federated model over {what}, same held-out seizures: " + "; ".join(parts) + ".")
    return lines


def build_html(report: dict[str, Any]) -> str:
    """The report page."""
    run, audit, fed = report["run"], report["audit"], report["federated"]
    labels = run["config"]["labels"].split(",")
    all_ok = all(a["verified"] for a in audit.values())
    sites = H.table(["site", "records", "failed", "pose found"],
                    [[s["site"], s["records"], s["failed"], f"{s['pose_detection']:.0%}"] for s in report["sites"]])
    per_site = H.table(["site", "local-only bal. acc.", "federated bal. acc.", "centralised bal. acc.", "federated AUROC"],
                       [[s, report["local_only"].get(s, {}).get("metrics", {}).get("balanced_accuracy"),
                         fed["sites"][s].get("balanced_accuracy"), report["centralised"]["sites"].get(s, {}).get("balanced_accuracy"),
                         fed["sites"][s].get("auroc")] for s in sorted(fed["sites"])])
    audit_rows = [[s, H.badge("verified" if a["verified"] else "FAILED", "ok" if a["verified"] else "fail"), a["entries"],
                   a["epsilon"][-1]["epsilon_cumulative"] if a["epsilon"] else 0.0, a["epsilon_max"], a["delta"],
                   "; ".join(a["problems"]) or "-"] for s, a in sorted(audit.items())]
    declined = [f"round {r['round']}: {s} declined ({reason[:160]})" for r in run["rounds"] for s, reason in r.get("declined", {}).items()]
    blocks = [
        H.section("Summary", H.paragraph(
            f"{len(report['sites'])} hospitals, {sum(s['records'] for s in report['sites'])} de-identified seizure records, "
            f"{len(run['rounds'])} federated rounds ({report['federation_mode']}). Audit: "
            + ("every site's ledger verifies." if all_ok else "SOME LEDGERS FAIL VERIFICATION.")
            + (f" Every model's decision threshold and scale were set on {report['reference']['seizures']} public "
               "reference seizures (phantom patients of another seed, run through site prepare): post-processing "
               "of the released models, no privacy cost." if report.get("reference") else "")),
            H.table(["model", "privacy", *[title for _, title in METRICS], "bal. acc. 95% CI", "AUROC 95% CI"],
                    comparison_rows(report),
                    caption=f"pooled over every site's held-out test patients ({len(fed['y'])} seizures, the same for all three)"),
            *[H.paragraph(line) for line in federation_gain_lines(report)],
            *([H.paragraph(small_test_set_note(len(fed["y"])))] if len(fed["y"]) < SMALL_TEST_SET else [])),
        H.section("Sites", sites, per_site),
        H.section("Federated rounds", H.figure(rounds_figure(run), caption="global model after each round, on each site's held-out patients"),
                  H.bullet_list(declined) if declined else H.paragraph("No site declined a round.")),
        H.section("Privacy budget", H.figure(epsilon_figure(audit), caption="from each site's signed ledger "
                                             "(sites that spent the same lie on one line)")),
        H.section("Final model", H.figure(confusion_figure(fed["pooled"], labels)), H.figure(calibration_figure(fed["y"], fed["p"]))),
    ]
    if report.get("timeline"):
        blocks.append(H.section("One seizure's timeline", H.figure(timeline_figure(report["timeline"]),
                                                                  caption="per-snippet probability of generalisation, held-out patient")))
    if report.get("clinician"):
        c = report["clinician"]
        fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
        blocks.append(H.section("What a clinician reads", H.paragraph(
            f"Each of the {c['seizures']} held-out seizures through `semiofed predict`'s assessment with the final "
            f"model: {c['review']} flagged as unusual (unlike the public reference seizures) and sent for review "
            "instead of being classified."
            + (f" The page `semiofed predict` writes for one of them: {c['page']} (beside this report)."
               if c.get("page") else "")), H.table(
            ["site", "record", "true label", "decision", "confidence", "region the decision rests on",
             "side of the focal signs (truth)", "unusual score", "generalisation (truth)", "generalisation (estimated)"],
            [[r["site"], r["record_id"], r["label"],
              H.badge(r["decision"], "warn") if r["decision"] == "review" else r["decision"], r["confidence"],
              (r["top_region"] or "-").replace("_", " "),
              f"{r.get('side') or '-'} ({r.get('side_truth') or 'not lateralised'})", r["unusual_score"], fmt(r["generalization_s"]),
              fmt(r["estimated_generalization_s"])] for r in c["rows"]])))
    blocks.append(H.section("Audit", H.table(["site", "status", "entries", "epsilon spent", "epsilon max", "delta", "problems"], audit_rows)))
    blocks.append(H.section("Run", H.paragraph(f"final model: {report['final_checkpoint']}"),
                            H.table(["stage", "seconds"], sorted(report["timings_s"].items()))))
    blocks.append(H.Markup(_CHECK_SCRIPT))
    return H.page("semiofed demo report", *blocks,
                  subtitle="federated, differentially private seizure classification on phantom videos")


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, (np.floating, np.integer)):
        return _json_ready(obj.item())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_reports(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """Write report.json and report.html atomically."""
    out = Path(out)
    json_path, html_path = out / REPORT_JSON, out / REPORT_HTML
    write_bytes_atomic(json_path, (json.dumps(_json_ready(report), indent=2, sort_keys=True) + "\n").encode("utf-8"), mode=0o644)
    H.write_html(html_path, build_html(report))
    return json_path, html_path
