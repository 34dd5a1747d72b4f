"""The page a clinician reads for one seizure: decision with its interval, timeline with phases, body diagram.

One self-contained HTML file (common/reporting/html.py: inline CSS and SVG, no
script, nothing fetched), written next to the timeline PNG by `semiofed predict`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from semiofed.client.training.evolution import CLONIC, FOCAL, INTERICTAL, POSTICTAL, TONIC
from semiofed.client.training.explain import Explanation, SideExplanation
from semiofed.client.training.predict import Assessment
from semiofed.common.records.regions import REGIONS
from semiofed.common.reporting.html import (
    STATUS_INFO,
    STATUS_OK,
    STATUS_WARN,
    Markup,
    badge,
    bullet_list,
    escape,
    figure,
    page,
    paragraph,
    section,
    table,
    write_html,
)

PHASE_COLOURS = {INTERICTAL: "#f6f8fa", FOCAL: "#fde2b3", TONIC: "#f4a6a6", CLONIC: "#d97a7a", POSTICTAL: "#c9d7f0"}
_POSITIVE, _NEGATIVE, _NOT_READ, _NONE = (215, 48, 39), (69, 117, 180), "#d0d7de", "#f6f8fa"

# The body diagram, the patient facing the reader: the patient's right is on the reader's left.
# region -> (SVG element, its geometry attributes)
_BODY = {
    "face_head": ("circle", 'cx="100" cy="40" r="24"'),
    "trunk": ("rect", 'x="72" y="70" width="56" height="110" rx="10"'),
    "right_arm": ("line", 'x1="70" y1="80" x2="40" y2="168" stroke-width="16" stroke-linecap="round"'),
    "left_arm": ("line", 'x1="130" y1="80" x2="160" y2="168" stroke-width="16" stroke-linecap="round"'),
    "right_hand": ("circle", 'cx="36" cy="186" r="11"'),
    "left_hand": ("circle", 'cx="164" cy="186" r="11"'),
    "right_leg": ("line", 'x1="88" y1="186" x2="80" y2="296" stroke-width="18" stroke-linecap="round"'),
    "left_leg": ("line", 'x1="112" y1="186" x2="120" y2="296" stroke-width="18" stroke-linecap="round"'),
}


def region_colour(score: float, scale: float, read: bool, direction: float = 1.0) -> str:
    """Deeper for a region the decision rests on more; red when its movement supported the decision, blue when it
    spoke against it; near white for a read region of exactly 0; grey when the model ignores it."""
    if not read:
        return _NOT_READ
    if score == 0.0:  # read, and no share at all (e.g. the partner limb of a side-output pair)
        return _NONE
    strength = min(abs(score) / scale, 1.0) if scale > 0 else 0.0
    base = _POSITIVE if direction >= 0 else _NEGATIVE
    mixed = [round(255 + (c - 255) * (0.15 + 0.85 * strength)) for c in base]
    return "#{:02x}{:02x}{:02x}".format(*mixed)


def body_diagram(regions: dict[str, float], read: dict[str, bool], direction: dict[str, float] | None = None, *,
                 prefix: str = "region", label: str = "body regions by attribution") -> Markup:
    """Inline SVG of the body, each region coloured by its attribution (element id `<prefix>-<name>`)."""
    direction = direction or {}
    scale = max([abs(v) for k, v in regions.items() if read.get(k)] or [0.0])
    parts = [f'<svg viewBox="0 0 200 330" width="220" height="363" role="img" aria-label="{escape(label)}">']
    for name, (tag, geometry) in _BODY.items():
        colour = region_colour(regions.get(name, 0.0), scale, bool(read.get(name)), direction.get(name, 1.0))
        paint = f'stroke="{colour}"' if tag == "line" else f'fill="{colour}" stroke="#57606a" stroke-width="1"'
        title = f"{name.replace('_', ' ')}: {regions.get(name, 0.0):+.3f}" + ("" if read.get(name) else " (not read)")
        parts.append(f'<{tag} id="{prefix}-{name}" data-score="{regions.get(name, 0.0):.4f}" {geometry} {paint}>'
                     f"<title>{escape(title)}</title></{tag}>")
    parts.append('<text x="30" y="322" font-size="12">patient\'s right</text>'
                 '<text x="120" y="322" font-size="12">patient\'s left</text></svg>')
    return Markup("".join(parts))


def timeline_figure(assessment: Assessment):  # -> matplotlib Figure
    """Per-snippet probabilities over the phase bands, and each snippet's share of the decision below."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, e, ev = assessment.prediction, assessment.explanation, assessment.evolution
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 4.2), dpi=100, sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    times = p.snippet_times
    half = float(np.median(np.diff(times))) / 2 if len(times) > 1 else 0.5
    for seg in ev.segments():
        top.axvspan(float(seg["start_s"]) - half, float(seg["end_s"]) + half, color=PHASE_COLOURS[str(seg["phase"])],
                    alpha=0.8, lw=0)
    for c, label in enumerate(p.labels):
        top.plot(times, p.snippet_probabilities[:, c], label=f"P({label})")
    if ev.generalisation_s is not None:
        top.axvline(ev.generalisation_s, color="k", linestyle="--", label=f"generalisation {ev.generalisation_s:.1f} s")
    if ev.onset_s is not None:
        top.axvline(ev.onset_s, color="#57606a", linestyle=":", label=f"onset {ev.onset_s:.1f} s")
    from matplotlib.patches import Patch

    top.set_ylim(0, 1)
    top.set_ylabel("probability")
    top.legend(loc="upper left", fontsize=7, ncol=2)
    fig.legend(handles=[Patch(color=c, label=k) for k, c in PHASE_COLOURS.items()], loc="upper center", ncol=5,
               fontsize=7, frameon=False, title="estimated phase", title_fontsize=7)
    bars = e.snippet_contributions
    read = times if e.snippets is None else times[e.snippets]
    bottom.bar(read, bars, width=2 * half * 0.9, color=["#d73027" if b >= 0 else "#4575b4" for b in bars])
    bottom.axhline(0, color="#57606a", lw=0.5)
    bottom.set_ylabel(f"share of\nlog-odds({e.label})", fontsize=7)
    if e.snippets is not None and not e.snippets.all():
        bottom.set_title("the decision reads the seizure (the bars); the rest of the video is shown above", fontsize=7)
    bottom.set_xlabel("time from video start (s)")
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return fig


def region_time_figure(assessment: Assessment):  # -> matplotlib Figure
    """When each region mattered: the fall of each read snippet's log-odds when the region is held still."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p, e = assessment.prediction, assessment.explanation
    times = p.snippet_times if e.snippets is None else p.snippet_times[e.snippets]
    rows = [k for k, r in enumerate(REGIONS) if e.region_read.get(r.name)]
    fig, ax = plt.subplots(figsize=(8, 0.35 * max(len(rows), 1) + 1.0), dpi=100)
    data = e.region_timeline[rows] if rows else np.zeros((1, len(times)))
    scale = float(np.abs(data).max()) or 1.0
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest",
                      extent=(float(times[0]) - step / 2, float(times[-1]) + step / 2, len(data) - 0.5, -0.5))
    ax.set_yticks(range(len(data)), [REGIONS[k].label for k in rows] or ["(no region read)"], fontsize=7)
    ax.set_xlabel("time from video start (s)")
    fig.colorbar(image, ax=ax, label=f"fall of log-odds({e.label})", fraction=0.03)
    fig.tight_layout()
    return fig


def signs_diagram(side: SideExplanation) -> Markup:
    """The body with each limb coloured by its pair's share of the side output (element id `signs-<name>`): red at
    the limbs that put the focal signs on the side named, blue where a pair speaks for the other side; the face/head
    and trunk, which the side output does not read, grey."""
    read = {r.name: r.side is not None for r in REGIONS}
    return body_diagram(side.regions, read, side.regions, prefix="signs", label="where the focal signs are")


def decision_rests_on(explanation: Explanation) -> str:
    """The region the decision's reading rests on most, and whether its movement spoke for the decision or against."""
    top = explanation.top_region
    if top is None:
        return "no region (holding any one still leaves the decision as it is)"
    spoke = "for" if explanation.direction.get(top, 0.0) >= 0 else "against"
    return f"{top.replace('_', ' ')} (its movement spoke {spoke} {explanation.label})"


def side_text(side: SideExplanation | None) -> str:
    """The side output in words: the side, its probability and the limb that carries most of it."""
    if side is None:
        return "not available (this model has no side output)"
    if side.side is None:
        return "none named (the side output gives neither side: trained without side labels?)"
    top = (side.top_region or "no single limb").replace("_", " ")
    return f"{side.side} ({side.probability:.0%}, not calibrated); mostly from the {top}"


def unusual_text(unusual: dict) -> str:
    """The unusual-seizure check in words: its score against the flag, and the motion descriptors most unlike the
    reference seizures, with their shares of the distance; or why there is no score."""
    if unusual.get("score") is None:
        return "not available" + (f" ({unusual['note']})" if unusual.get("note") else "")
    parts = ", ".join(f"{d['name'].replace('_', ' ')} {d['share']:.0%}" for d in unusual.get("descriptors") or [])
    read = f"; read on the {unusual['read_on']}" if unusual.get("read_on") else ""
    return (f"{unusual['score']:.2f} (flag above {unusual['threshold']:.2f}; {unusual['tail']:.0%} of reference "
            f"seizures lie further out){read}; most unlike them: {parts}")


def assessment_page(assessment: Assessment, *, title: str, model: str) -> Markup:
    """The whole page for one seizure."""
    p, e, ev, unusual = assessment.prediction, assessment.explanation, assessment.evolution, assessment.unusual
    lo, hi = e.interval
    if unusual.get("flag"):
        decision = badge(f"unusual seizure: for review (the model would say {p.predicted})", STATUS_WARN)
    else:
        decision = badge(f"{p.predicted}: {p.confidence:.0%} (segment range {lo:.0%}-{hi:.0%})", STATUS_OK)
    summary = table(None, [
        ["decision", decision],
        *[[f"P({label}), calibrated", round(v, 3)] for label, v in p.probabilities.items()],
        ["confidence interval (5-95% over segment draws)", f"{lo:.3f} - {hi:.3f}"],
        ["onset (movement)", "not found" if ev.onset_s is None else f"{ev.onset_s:.1f} s"],
        ["bilateral generalisation", "none found" if ev.generalisation_s is None else f"{ev.generalisation_s:.1f} s"],
        ["side of the focal signs", side_text(e.side)],
        [f"what the {e.label} decision rests on most", decision_rests_on(e)],
        ["unusual-seizure score", unusual_text(unusual)],
    ])
    import matplotlib.pyplot as plt

    fig = timeline_figure(assessment)
    timeline = figure(fig, caption="Top: calibrated per-snippet probabilities over the estimated phases (colours: "
                                   + ", ".join(PHASE_COLOURS) + "). Bottom: each snippet's share of the decision's "
                                   "log-odds (red for, blue against).")
    plt.close(fig)
    fig = region_time_figure(assessment)
    region_time = figure(fig, caption="When each region mattered: red where holding the region still lowers the "
                                      "snippet's log-odds of the decision (its movement then spoke for it), blue "
                                      "where it raises them.")
    plt.close(fig)
    side_regions = e.side.regions if e.side is not None else {}
    rows = [[r.name.replace("_", " "), r.side or "-", round(e.regions.get(r.name, 0.0), 4),
             round(e.direction.get(r.name, 0.0), 4), "yes" if e.region_read.get(r.name) else "no",
             round(side_regions[r.name], 4) if r.name in side_regions else "-"] for r in REGIONS]
    signs = "" if e.side is None or e.side.side is None else (
        f'<figure id="signs-diagram">{signs_diagram(e.side)}<figcaption>where the focal signs are ({e.side.side}): '
        "each limb's share of the side output; red: its left-minus-right movement or posture puts the signs on the "
        "side named; blue: it points to the other side; grey: not read by the side output</figcaption></figure>")
    regions = section(
        "Where in the body",
        Markup('<div style="display:flex;gap:2rem;align-items:flex-start">' + signs +
               f'<figure id="body-diagram">{body_diagram(e.regions, e.region_read, e.direction)}'
               f"<figcaption>what the {escape(e.label)} decision rests on: deeper, the model's reading rests more on "
               "the region; red: its movement supported the decision; blue: it spoke against it; grey: the model does "
               "not read this region</figcaption></figure>"
               + table(["region", "side", "attribution (mean change of the snippets' log-odds)",
                        f"direction (fall of the log-odds of {e.label})", "read by the model",
                        "share of the side output (+ for the side named)"], rows) + "</div>"),
        paragraph(f"Attributions by occlusion: each region is held still in the landmark track and the model re-run. "
                  f"They cover the {e.covers}. They say what the {e.label} decision rests on, which for a focal "
                  "seizure is often the quiet arm (the decision reads how little the weaker arm moves); where the "
                  "focal signs are, says the side output: each limb pair's left-minus-right movement and posture, "
                  "weighted, at the limb it points to."),
        region_time,
    )
    unusual_block = section("Is this seizure like the reference seizures?", paragraph(
        unusual.get("note") or ("Flagged: the movement pattern lies outside the reference seizures the model was "
                                "calibrated on. Mark it for review; the classification is withheld." if unusual.get("flag")
                                else "Within the reference seizures' range.")))
    notes = bullet_list([f"model: {model}", f"calibration temperature {p.temperature:.2f}",
                         "onset, phases and the moment of generalisation from the patient's own movement (the first "
                         "bilaterally synchronous arm movement); whether the seizure generalised, from the model", "decision support only: a clinician reviews the video"])
    status = STATUS_WARN if unusual.get("flag") else STATUS_INFO
    return page(title, section("Decision", summary), section("How the seizure evolved", timeline), regions,
                unusual_block, section("About this page", notes),
                subtitle=f"semiofed predict - {'for review' if status == STATUS_WARN else 'decision support'}")


def write_assessment_page(assessment: Assessment, path: Path, *, title: str, model: str) -> Path:
    """Write the page atomically; return its path."""
    write_html(Path(path), assessment_page(assessment, title=title, model=model))
    return Path(path)
