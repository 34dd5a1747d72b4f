"""Why the model decided as it did: per-region and per-time attributions, and how stable the decision is.

- Per region (occlusion): each body region of common/records/regions.py is
  held still in the record's pose track, the model inputs are recomputed and
  the model re-run. A region's attribution is the occlusion sensitivity: the
  mean over the snippets of how far the per-snippet log-odds of the predicted
  class move when the region is still (how much the model's reading of the
  seizure rests on that region's movement). Its direction is the change of
  the seizure-level log-odds: positive, the region's movement spoke for the
  decision; negative, against it. Log-odds, not probability points: a
  confident decision would saturate the probability and hide every region.
  Over the snippets the same differences give a region x time map. A region the model does not read (its
  inputs do not change when it is held still) is reported as not read, with 0.
- Per time (exact): the seizure logits are the pooled snippet logits, so each
  snippet's share of the seizure-level log-odds of the predicted class is its
  pooling weight times its own log-odds.
- Side (exact): the side output's logit is linear in the side stream's
  left-minus-right differences (common/records/side.py), so over the snippets
  read it is the sum of each limb pair's weighted differences; a pair's share
  is placed at the limb of the side it points to. The FOS/TCS decision's
  attributions above often name the quiet arm of a focal seizure (the decision
  reads how little the weaker arm moves); the side output says where the focal
  signs are.
- Interval: the model was trained on n_segments snippets drawn with jitter
  (GESTURES); the 5-95% range of the calibrated probability over such draws of
  this seizure says how much the decision depends on which moments are read.

Everything here is inference on one record at the site: nothing leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from semiofed.common.learning.checkpoint import Checkpoint
from semiofed.common.learning.classifier import AttentionMLP
from semiofed.common.learning.metrics import softmax
from semiofed.common.learning.trainer import snippet_logits
from semiofed.common.records.activity import Activity, seizure_snippets
from semiofed.common.records.features import STCNN_STREAMS, STREAM_SIDE, record_inputs, segment_indices
from semiofed.common.records.regions import REGIONS, held_still, noise_floor
from semiofed.common.records.schema import SeizureRecord

INTERVAL_DRAWS = 200
INTERVAL = (5.0, 95.0)
# A region whose input changes by less than this (max abs, on the descriptors' [-3, 3] scale) is not read.
_UNCHANGED = 1e-4


# The side output's inputs (common/records/side.py) by the limb pair they compare.
_SIDE_LIMBS = {"arm": ("arm_energy", "arm_rhythm", "wrist_height"), "hand": ("hand_energy", "hand_rhythm"),
               "leg": ("leg_energy", "leg_rhythm")}


@dataclass(frozen=True)
class SideExplanation:
    """The side output of one prediction: which side of the body the focal signs are on, and which limbs say so."""

    side: str | None  # "left" or "right": the patient's own; None when the side output says neither (logit 0)
    probability: float  # P(that side) from the side output's logistic (not calibrated); 0.5 with no side
    # region -> its limb pair's share of the side decision's log-odds, at the limb of the side the pair points to:
    # positive on the named side (the pair speaks for it), negative on the other (against it); the partner limb, the
    # face/head and the trunk get 0 (the side output reads no face/head or trunk). The values sum to the log-odds.
    regions: dict[str, float]

    @property
    def top_region(self) -> str | None:
        """The limb whose pair carries the most evidence for the named side, or None."""
        best = max(self.regions, key=self.regions.get) if self.regions else None
        return best if best is not None and self.regions[best] > 0 else None

    def to_json(self) -> dict[str, object]:
        """JSON-ready values."""
        return {"side": self.side, "probability": round(self.probability, 4),
                "regions": {k: round(v, 4) for k, v in self.regions.items()}, "top_region": self.top_region}


def explain_side(checkpoint: Checkpoint, inputs: np.ndarray) -> SideExplanation | None:
    """The side output on the snippets read ([S, D_in] model inputs), or None for a model without it.

    The side logit is linear in the left-minus-right differences (no intercept), so its mean over the snippets is
    exactly the sum of weight x mean difference over the seven inputs: each limb pair's share is the sum over its
    inputs, and a pair's share points to one side (a symmetric body gives 0)."""
    from semiofed.common.records.side import SIDE_FEATURE_NAMES, SIDES

    config = checkpoint.config
    if not config.side_output or inputs.shape[0] == 0:
        return None
    model = checkpoint.model
    with torch.no_grad():
        logit, _ = model.side_logits(torch.from_numpy(np.ascontiguousarray(inputs, dtype=np.float32)))
        diffs = inputs[:, config.stream_columns(STREAM_SIDE)].astype(np.float64).mean(axis=0)
        shares = model.side.weight.detach().numpy().astype(np.float64)[0] * diffs
    value = float(logit)
    regions = {r.name: 0.0 for r in REGIONS}
    if value == 0.0:  # e.g. a model trained where no seizure had a side label: its side output is still zero
        return SideExplanation(side=None, probability=0.5, regions=regions)
    side = SIDES[int(value > 0)]
    sign = 1.0 if side == "left" else -1.0
    other = "right" if side == "left" else "left"
    for limb, names in _SIDE_LIMBS.items():
        share = sign * float(sum(shares[SIDE_FEATURE_NAMES.index(f"{n}_left_minus_right")] for n in names))
        # the pair's evidence sits at the limb it points to: for the named side (+), or against it on the other (-)
        regions[f"{side if share >= 0 else other}_{limb}"] = share
    probability = float(1.0 / (1.0 + np.exp(-abs(value))))
    return SideExplanation(side=side, probability=probability, regions=regions)


@dataclass(frozen=True)
class Explanation:
    """Attributions of one prediction."""

    label: str  # the predicted class the attributions are for
    regions: dict[str, float]  # region name -> mean |change| of the snippets' log-odds of `label` when held still
    direction: dict[str, float]  # region name -> fall of the seizure's log-odds of `label` when held still
    region_read: dict[str, bool]  # whether the model's inputs depend on the region at all
    region_timeline: np.ndarray  # [R, S'] fall of each read snippet's log-odds of `label`, regions in REGIONS order
    snippet_contributions: np.ndarray  # [S'] each read snippet's share of the seizure log-odds of `label`
    interval: tuple[float, float]  # 5-95% of the calibrated P(label) over jittered segment draws
    covers: str  # what the region attributions cover ("keypoint stream" or a note on STCNN streams)
    snippets: np.ndarray | None = None  # [S] bool: the snippets the decision read (the S' above), None: all
    side: SideExplanation | None = None  # the side output on the same snippets (None: the model has none)

    @property
    def top_region(self) -> str | None:
        """The read region the model's reading depends on most, or None."""
        read = [(abs(v), k) for k, v in self.regions.items() if self.region_read.get(k)]
        return max(read)[1] if read and max(read)[0] > 0 else None

    def to_json(self) -> dict[str, object]:
        """JSON-ready values (without the per-snippet arrays)."""
        return {"label": self.label, "regions": {k: round(v, 4) for k, v in self.regions.items()},
                "regions_direction": {k: round(v, 4) for k, v in self.direction.items()},
                "regions_read": self.region_read, "top_region": self.top_region,
                "interval": [round(self.interval[0], 4), round(self.interval[1], 4)], "covers": self.covers,
                "side": self.side.to_json() if self.side is not None else None}


def _log_odds(logits: np.ndarray, c: int, temperature: float) -> np.ndarray:
    """log P(c) - log(1 - P(c)) of calibrated logits [..., C]."""
    p = softmax(np.atleast_2d(logits), temperature)[:, c]
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def pooling_weights(checkpoint: Checkpoint, inputs: np.ndarray) -> np.ndarray:
    """[S] the weight of each snippet's logits in the seizure logits (uniform, or the attention weights)."""
    model = checkpoint.model
    if not isinstance(model.temporal, AttentionMLP):
        return np.full(inputs.shape[0], 1.0 / inputs.shape[0])
    captured: list[torch.Tensor] = []
    handle = model.temporal.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        snippet_logits(model, inputs)
    finally:
        handle.remove()
    with torch.no_grad():
        return torch.softmax(model.temporal.score(captured[-1]), dim=1)[0, :, 0].numpy().astype(np.float64)


def segment_interval(checkpoint: Checkpoint, inputs: np.ndarray, c: int, *, draws: int = INTERVAL_DRAWS,
                     seed: int = 0) -> tuple[float, float]:
    """5-95% of the calibrated P(class c) over `draws` jittered segment samplings of the snippets."""
    n_segments = checkpoint.config.n_segments
    rng = np.random.default_rng(seed)  # inference only: a fixed seed makes the page reproducible
    idx = np.stack([segment_indices(inputs.shape[0], n_segments, train=True, rng=rng) for _ in range(draws)])
    model = checkpoint.model
    model.eval()
    with torch.no_grad():
        seizure, _ = model(torch.from_numpy(np.ascontiguousarray(inputs[idx], dtype=np.float32)))
    p = softmax(seizure.numpy(), checkpoint.temperature)[:, c]
    lo, hi = np.percentile(p, INTERVAL)
    return float(lo), float(hi)


def explain_record(checkpoint: Checkpoint, record: SeizureRecord, label: str | None = None, *,
                   seizure_only: bool = True, activity: Activity | None = None) -> Explanation:
    """Attributions of the model's decision on one record, for `label` (default: the predicted class), over the
    snippets the decision reads (client/training/predict.py's `predict_record`)."""
    checkpoint.check_record(record)
    config = checkpoint.config
    t = checkpoint.temperature
    read_snippets = seizure_snippets(record, activity) if seizure_only else None
    inputs = record_inputs(record, config.streams)
    if read_snippets is not None:
        inputs = inputs[read_snippets]
    seizure, snippets = snippet_logits(checkpoint.model, inputs)
    c = int(np.argmax(seizure)) if label is None else config.labels.index(label)
    odds = float(_log_odds(seizure, c, t)[0])
    odds_snippets = _log_odds(snippets, c, t)
    regions: dict[str, float] = {}
    direction: dict[str, float] = {}
    read: dict[str, bool] = {}
    timeline = np.zeros((len(REGIONS), inputs.shape[0]))
    floor = noise_floor(record.arrays)  # one tracking-noise floor for every region of this video
    decision = list(config.decision_columns)  # the side stream changes too, but the decision does not read it
    for k, body_region in enumerate(REGIONS):
        still = record_inputs(replace(record, arrays=held_still(record.arrays, body_region.name, floor=floor)),
                              config.streams)
        if read_snippets is not None:
            still = still[read_snippets]
        read[body_region.name] = bool(np.abs(still[:, decision] - inputs[:, decision]).max() > _UNCHANGED) \
            if still.size else False
        if not read[body_region.name]:
            regions[body_region.name] = direction[body_region.name] = 0.0
            continue
        s_still, sn_still = snippet_logits(checkpoint.model, still)
        direction[body_region.name] = odds - float(_log_odds(s_still, c, t)[0])
        timeline[k] = odds_snippets - _log_odds(sn_still, c, t)
        regions[body_region.name] = float(np.abs(timeline[k]).mean())
    contributions = pooling_weights(checkpoint, inputs) * odds_snippets
    covers = "keypoint stream" if not set(config.streams) & set(STCNN_STREAMS) else \
        "keypoint stream only; the STCNN streams see the whole picture and are not split by region"
    return Explanation(label=config.labels[c], regions=regions, direction=direction, region_read=read, region_timeline=timeline,
                       snippet_contributions=contributions, interval=segment_interval(checkpoint, inputs, c),
                       covers=covers, snippets=read_snippets, side=explain_side(checkpoint, inputs))
