"""The seizure classifier: snippet streams -> temporal model -> seizure and per-snippet logits.

GESTURES-style (arXiv 2106.12014): per-snippet features feed a temporal model
whose per-snippet outputs go through one linear head; the seizure logits pool
them. Every trainable parameter lives in an `nn.Linear`, and no layer mixes
batch elements, so per-sample (per-patient) gradients are exact from layer
activations and output gradients (see common/learning/per_sample.py), and Opacus's
GradSampleModule can also compute them (the recurrent weights are
`nn.Linear`s reused once per time step, as in `opacus.layers.DPLSTM`).
"""

from __future__ import annotations


from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from semiofed.common.constants import (  # noqa: F401 - re-exported for callers of this module
    DEFAULT_LABELS,
    TEMPORAL_ATTN,
    TEMPORAL_BLSTM,
    TEMPORAL_GRU,
    TEMPORAL_LINEAR,
    TEMPORAL_MODELS,
    TEMPORAL_TCONV,
)
from semiofed.common.errors import SemiofedError
from semiofed.common.learning.spec import DEFAULT_MODEL, DESCRIPTORS_ALL, ModelSpec
if TYPE_CHECKING:
    from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.records.features import (
    KEYPOINT_DIM,
    REGION_STREAM_DIM,
    SIDE_DIM,
    STCNN_MOTION_DIM,
    STREAM_KEYPOINTS,
    STREAM_REGIONS,
    STREAM_SIDE,
    STREAM_STCNN,
    STREAM_STCNN_MOTION,
    check_streams,
    keypoint_columns,
)


@dataclass(frozen=True)
class ClassifierConfig:
    """The shape of a classifier; stored in every checkpoint."""

    labels: tuple[str, ...] = DEFAULT_MODEL.labels
    streams: tuple[str, ...] = DEFAULT_MODEL.streams
    temporal: str = DEFAULT_MODEL.temporal
    stcnn_dim: int = 1024  # I3D Mixed_5c average-pooled
    keypoint_dim: int = KEYPOINT_DIM
    # the motion descriptors the model reads from the keypoint stream (plus its validity column); () reads every
    # column (checkpoints written before the selection existed, and custom-width streams)
    descriptors: tuple[str, ...] = ()
    # per-stream linear embedding before fusion; 0 feeds the raw features (GESTURES)
    embed_dim: int = DEFAULT_MODEL.embed_dim
    hidden: int = DEFAULT_MODEL.hidden
    n_segments: int = DEFAULT_MODEL.n_segments
    dropout: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "labels", tuple(self.labels))
        object.__setattr__(self, "streams", check_streams(self.streams))
        if self.streams == (STREAM_SIDE,):
            raise SemiofedError(f"stream selection {list(self.streams)} has nothing for the seizure decision to read",
                                f"add a decision stream, e.g. {STREAM_KEYPOINTS} (the '{STREAM_SIDE}' stream feeds "
                                "only the side output)")
        object.__setattr__(self, "descriptors", tuple(self.descriptors))
        keypoint_columns(self.descriptors)  # names checked
        if self.descriptors and self.keypoint_dim != KEYPOINT_DIM:
            raise SemiofedError(f"classifier keypoint_dim={self.keypoint_dim} with named descriptors",
                                f"named descriptors need the full {KEYPOINT_DIM}-column keypoint stream")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise SemiofedError(f"label set {list(self.labels)} needs at least two distinct labels", "use e.g. FOS,TCS")
        if self.temporal not in TEMPORAL_MODELS:
            raise SemiofedError(f"temporal model '{self.temporal}' is unknown", f"use one of {list(TEMPORAL_MODELS)}")
        for name in ("keypoint_dim", "hidden", "n_segments"):
            if getattr(self, name) < 1:
                raise SemiofedError(f"classifier {name}={getattr(self, name)} must be positive")
        if self.stcnn_dim < (1 if STREAM_STCNN in self.streams else 0):
            raise SemiofedError(f"classifier stcnn_dim={self.stcnn_dim} must be positive for the '{STREAM_STCNN}' stream",
                                "prepare the records with an STCNN, or train on the keypoints stream only")
        if self.embed_dim < 0 or not (0.0 <= self.dropout < 1.0):
            raise SemiofedError("classifier embed_dim must be >= 0 and dropout in [0, 1)")

    @classmethod
    def from_spec(cls, spec: ModelSpec, *, stcnn_dim: int) -> "ClassifierConfig":
        """The classifier of a model spec, for records whose STCNN features are `stcnn_dim` wide."""
        return cls(labels=spec.labels, streams=spec.streams, temporal=spec.temporal, stcnn_dim=int(stcnn_dim),
                   embed_dim=spec.embed_dim, hidden=spec.hidden, n_segments=spec.n_segments, descriptors=spec.descriptors)

    @property
    def spec(self) -> ModelSpec:
        """The model spec this classifier was built from."""
        return ModelSpec(labels=self.labels, streams=self.streams, temporal=self.temporal, hidden=self.hidden,
                         embed_dim=self.embed_dim, n_segments=self.n_segments, descriptors=self.descriptors or (DESCRIPTORS_ALL,))

    def stream_width(self, stream: str) -> int:
        """Width of one stream's input per snippet."""
        if stream == STREAM_STCNN:
            return self.stcnn_dim
        if stream == STREAM_REGIONS:
            return REGION_STREAM_DIM
        if stream == STREAM_SIDE:
            return SIDE_DIM
        return STCNN_MOTION_DIM if stream == STREAM_STCNN_MOTION else self.keypoint_dim

    @property
    def input_dim(self) -> int:
        """Width of the concatenated stream input per snippet."""
        return sum(self.stream_width(s) for s in self.streams)

    @property
    def side_output(self) -> bool:
        """Whether the model has the side output (it reads the side stream, and only it does)."""
        return STREAM_SIDE in self.streams

    def stream_columns(self, stream: str) -> slice:
        """Where `stream` lies in the concatenated input (streams in their canonical order)."""
        start = 0
        for name in self.streams:
            if name == stream:
                return slice(start, start + self.stream_width(name))
            start += self.stream_width(name)
        raise SemiofedError(f"this model has no '{stream}' stream", f"its streams are {', '.join(self.streams)}")

    @property
    def decision_columns(self) -> tuple[int, ...]:
        """The input columns the FOS/TCS decision can depend on (every stream but the side stream)."""
        side = range(self.input_dim)[self.stream_columns(STREAM_SIDE)] if self.side_output else range(0)
        return tuple(i for i in range(self.input_dim) if i not in side)

    @property
    def keypoint_read(self) -> tuple[int, ...]:
        """The keypoint-stream columns the model reads."""
        return keypoint_columns(self.descriptors) if self.descriptors else tuple(range(self.keypoint_dim))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready values."""
        d = asdict(self)
        d["labels"], d["streams"], d["descriptors"] = list(self.labels), list(self.streams), list(self.descriptors)
        return d

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "ClassifierConfig":
        """Parse a stored config, naming unknown fields."""
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise SemiofedError(f"classifier config has unknown fields {unknown}", "use a checkpoint written by this semiofed")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


class LSTMDirection(nn.Module):
    """One direction of an LSTM built from two Linears (input and recurrent), like DPLSTM's cell."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(input_size, 4 * hidden)
        self.hh = nn.Linear(hidden, 4 * hidden, bias=False)
        with torch.no_grad():  # forget-gate bias 1 (Jozefowicz et al. 2015)
            self.ih.bias[hidden : 2 * hidden].fill_(1.0)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """[B, T, in] -> [B, T, hidden]."""
        b, t, _ = x.shape
        gates_in = self.ih(x)  # all time steps in one matmul
        h = x.new_zeros(b, self.hidden)
        c = x.new_zeros(b, self.hidden)
        outs: list[torch.Tensor] = [h] * t
        for step in (range(t - 1, -1, -1) if reverse else range(t)):
            gates = gates_in[:, step] + self.hh(h)
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outs[step] = h
        return torch.stack(outs, dim=1)


class BLSTM(nn.Module):
    """Bidirectional single-layer LSTM, batch first."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.fwd = LSTMDirection(input_size, hidden)
        self.bwd = LSTMDirection(input_size, hidden)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.fwd(x), self.bwd(x, reverse=True)], dim=-1)


class GRU(nn.Module):
    """Unidirectional single-layer GRU from two Linears (input and recurrent), batch first.

    Causal: the state at a snippet sees only the seizure so far, so the per-snippet
    timeline reads as the seizure unfolds.
    """

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.ih = nn.Linear(input_size, 3 * hidden)
        self.hh = nn.Linear(hidden, 3 * hidden)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, in] -> [B, T, hidden]."""
        b, t, _ = x.shape
        gates_in = self.ih(x)  # all time steps in one matmul
        h = x.new_zeros(b, self.hidden)
        outs: list[torch.Tensor] = []
        k = self.hidden
        for step in range(t):
            gi, gh = gates_in[:, step], self.hh(h)
            r = torch.sigmoid(gi[:, :k] + gh[:, :k])
            z = torch.sigmoid(gi[:, k : 2 * k] + gh[:, k : 2 * k])
            n = torch.tanh(gi[:, 2 * k :] + r * gh[:, 2 * k :])
            h = (1 - z) * n + z * h
            outs.append(h)
        return torch.stack(outs, dim=1)


class Identity(nn.Module):
    """No temporal model: the head reads each window's features (the linear baseline)."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.out_dim = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class TemporalConv(nn.Module):
    """Two 'same'-padded temporal convolutions (kernel 3, dilation 1 then 2) as Linears over windows."""

    def __init__(self, input_size: int, hidden: int, kernel: int = 3) -> None:
        super().__init__()
        self.kernel = kernel
        self.conv1 = nn.Linear(kernel * input_size, hidden)
        self.conv2 = nn.Linear(kernel * hidden, hidden)
        self.out_dim = hidden

    def _windows(self, x: torch.Tensor, dilation: int) -> torch.Tensor:
        t = x.shape[1]
        half = (self.kernel // 2) * dilation
        padded = F.pad(x, (0, 0, half, half))
        return torch.cat([padded[:, k * dilation : k * dilation + t] for k in range(self.kernel)], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(self._windows(x, 1)))
        return h + F.relu(self.conv2(self._windows(h, 2)))


class AttentionMLP(nn.Module):
    """Per-snippet MLP; pooling weights come from `score`."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Linear(input_size, hidden)
        self.score = nn.Linear(hidden, 1)
        self.out_dim = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.mlp(x))


class RegionFusion(nn.Module):
    """The body-region stream fused: each region through its own small encoder, then mirror-symmetric fusion.

    The two sides of a limb share one encoder; per limb the fused code is the sum and the absolute difference of
    its sides' codes, so a left-sided seizure and its mirror image fuse the same (the side is kept in the input and
    named by the attributions, not learnt twice from few patients); the arm and leg synchrony and the window's
    validity are appended. About 30 parameters at code size 2 (common/records/region_motion.py has the inputs).
    """

    LIMBS = ("arm", "hand", "leg")

    def __init__(self, code: int = 2) -> None:
        super().__init__()
        from semiofed.common.records.region_motion import PER_REGION, REGION_STREAM_NAMES

        self.per_region = PER_REGION
        self.columns = {name.rsplit("_", 1)[0]: i for i, name in enumerate(REGION_STREAM_NAMES) if name.endswith("_energy")}
        self.encoders = nn.ModuleDict({name: nn.Linear(PER_REGION, code) for name in ("face_head", *self.LIMBS, "trunk")})
        self.out_dim = code * (2 + 2 * len(self.LIMBS)) + 3

    def _code(self, z: torch.Tensor, region: str, encoder: str) -> torch.Tensor:
        start = self.columns[region]
        return F.relu(self.encoders[encoder](z[..., start : start + self.per_region]))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        parts = [self._code(z, "face_head", "face_head")]
        for limb in self.LIMBS:
            left, right = self._code(z, f"left_{limb}", limb), self._code(z, f"right_{limb}", limb)
            parts += [left + right, (left - right).abs()]
        parts += [self._code(z, "trunk", "trunk"), z[..., -3:]]
        return torch.cat(parts, dim=-1)


class SeizureClassifier(nn.Module):
    """Streams -> (embedding) -> temporal model -> per-snippet logits; seizure logits pool them."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.ModuleDict()
        fused = 0
        # which keypoint-stream columns the model reads (a fixed public selection; not a parameter, not exchanged)
        self.register_buffer("keypoint_read", torch.tensor(config.keypoint_read, dtype=torch.long), persistent=False)
        if STREAM_REGIONS in config.streams:
            self.regions = RegionFusion()
        if config.side_output:
            # left-minus-right differences in, no intercept: a mirrored seizure gets the negated logit. Starts at 0
            # (no side) so that a model trained without side labels names none.
            self.side = nn.Linear(config.stream_width(STREAM_SIDE), 1, bias=False)
            nn.init.zeros_(self.side.weight)
        for stream in config.streams:
            if stream == STREAM_SIDE:
                continue
            width = len(config.keypoint_read) if stream == STREAM_KEYPOINTS else config.stream_width(stream)
            if stream == STREAM_REGIONS:
                width = self.regions.out_dim
            if config.embed_dim:
                self.embed[stream] = nn.Linear(width, config.embed_dim)
                fused += config.embed_dim
            else:
                fused += width
        if config.temporal == TEMPORAL_BLSTM:
            self.temporal = BLSTM(fused, config.hidden)
        elif config.temporal == TEMPORAL_TCONV:
            self.temporal = TemporalConv(fused, config.hidden)
        elif config.temporal == TEMPORAL_GRU:
            self.temporal = GRU(fused, config.hidden)
        elif config.temporal == TEMPORAL_LINEAR:
            self.temporal = Identity(fused, config.hidden)
        else:
            self.temporal = AttentionMLP(fused, config.hidden)
        self.head = nn.Linear(self.temporal.out_dim, len(config.labels))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., S, D_in] -> (seizure logits [..., C], snippet logits [..., S, C])."""
        lead, (s, d) = x.shape[:-2], x.shape[-2:]
        x = x.reshape(-1, s, d)
        parts, start = [], 0
        for stream in self.config.streams:
            width = self.config.stream_width(stream)
            z = x[..., start : start + width]
            if stream == STREAM_SIDE:  # the side output's alone: the decision stays mirror-free
                start += width
                continue
            if stream == STREAM_KEYPOINTS:
                z = z.index_select(-1, self.keypoint_read)
            if stream == STREAM_REGIONS:
                z = self.regions(z)
            if stream == STREAM_STCNN:  # parameter-free per-snippet normalisation: no statistic shared across patients
                z = F.layer_norm(z, (width,))
            # the keypoint and STCNN motion streams are already on a fixed public scale (common/records/motion.py,
            # features.py): their levels carry the seizure (how hard, how rhythmic), which a normalisation would erase
            start += width
            parts.append(F.relu(self.embed[stream](z)) if self.config.embed_dim else z)
        h = torch.cat(parts, dim=-1)
        if self.config.dropout and self.training:
            h = F.dropout(h, self.config.dropout)
        h = self.temporal(h)
        snippet_logits = self.head(h)
        # The head is linear and pooling weights sum to one, so pooling the snippet logits
        # equals the head of the pooled state; the head then runs once (as Opacus hooks need).
        if isinstance(self.temporal, AttentionMLP):
            weights = torch.softmax(self.temporal.score(h), dim=1)
            seizure_logits = (weights * snippet_logits).sum(dim=1)
        else:
            seizure_logits = snippet_logits.mean(dim=1)
        c = snippet_logits.shape[-1]
        return seizure_logits.reshape(*lead, c), snippet_logits.reshape(*lead, s, c)

    def side_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [..., S, D_in] -> (seizure side logit [...], snippet side logits [..., S]); positive: the patient's left.
        The seizure's is the mean of its snippets'. Only for a model with the side output."""
        if not self.config.side_output:
            raise SemiofedError("this model has no side output", f"train it with the '{STREAM_SIDE}' stream")
        snippets = self.side(x[..., self.config.stream_columns(STREAM_SIDE)])[..., 0]
        return snippets.mean(dim=-1), snippets


def build_classifier(config: ClassifierConfig, *, seed: int | None = None) -> SeizureClassifier:
    """A freshly initialised classifier."""
    if seed is not None:
        torch.manual_seed(seed)
    return SeizureClassifier(config)


def classifier_config(run: "FederationConfig") -> ClassifierConfig:
    """The classifier every site trains in a federated run."""
    return ClassifierConfig.from_spec(run.model_spec, stcnn_dim=run.stcnn_dim)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


__all__ = [
    "ClassifierConfig",
    "classifier_config",
    "SeizureClassifier",
    "build_classifier",
    "parameter_count",
    "TEMPORAL_MODELS",
    "DEFAULT_LABELS",
]
