"""I3D (Inception-v1 3D, RGB, Kinetics-400): a PyTorch port that loads DeepMind's weights exactly."""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semiofed.common.errors import ModelFileError
from semiofed.common.models.registry import FETCH_HINT, I3D_KINETICS400, verified_path

log = logging.getLogger(__name__)

FEATURE_DIM = 1024
NUM_CLASSES = 400
BN_EPS = 1e-3  # Sonnet's BatchNorm default in DeepMind's i3d.py

# Output channels of a Mixed block's six convs, in DeepMind's order:
# Branch_0 1x1, Branch_1 1x1 -> 3x3, Branch_2 1x1 -> 3x3, Branch_3 (pool ->) 1x1.
_MIXED: dict[str, tuple[int, int, int, int, int, int]] = {
    "Mixed_3b": (64, 96, 128, 16, 32, 32),
    "Mixed_3c": (128, 128, 192, 32, 96, 64),
    "Mixed_4b": (192, 96, 208, 16, 48, 64),
    "Mixed_4c": (160, 112, 224, 24, 64, 64),
    "Mixed_4d": (128, 128, 256, 24, 64, 64),
    "Mixed_4e": (112, 144, 288, 32, 64, 64),
    "Mixed_4f": (256, 160, 320, 32, 128, 128),
    "Mixed_5b": (256, 160, 320, 32, 128, 128),
    "Mixed_5c": (384, 192, 384, 48, 128, 128),
}

Triple = tuple[int, int, int]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return TensorFlow 'SAME' padding (before, after) for one axis; the odd pixel goes at the end."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: Triple, stride: Triple, value: float = 0.0) -> torch.Tensor:
    """Pad a [N, C, T, H, W] tensor as TensorFlow 'SAME' would for this kernel and stride."""
    pads: list[int] = []
    # F.pad lists the last axis first: (W_before, W_after, H_before, H_after, T_before, T_after).
    for axis in (4, 3, 2):
        pads.extend(same_padding(x.shape[axis], kernel[axis - 2], stride[axis - 2]))
    if not any(pads):
        return x
    return F.pad(x, pads, value=value)


class BatchNormNoScale(nn.Module):
    """BatchNorm with an offset but no scale (gamma = 1), as in DeepMind's I3D."""

    def __init__(self, channels: int, eps: float = BN_EPS) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the running statistics (batch statistics when training)."""
        return F.batch_norm(
            x, self.running_mean, self.running_var, weight=None, bias=self.bias,
            training=self.training, momentum=0.001, eps=self.eps,  # TF decay 0.999
        )


class Unit3D(nn.Module):
    """Conv3d (SAME padding, no bias) -> BatchNorm without scale -> ReLU."""

    def __init__(self, scope: str, in_ch: int, out_ch: int, kernel: Triple = (1, 1, 1), stride: Triple = (1, 1, 1)) -> None:
        super().__init__()
        self.scope = scope  # the block's path in the npz, e.g. "Mixed_3b/Branch_1/Conv3d_0b_3x3"
        self.kernel, self.stride = kernel, stride
        self.conv = nn.Conv3d(in_ch, out_ch, kernel, stride=stride, bias=False)
        self.bn = BatchNormNoScale(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply conv, batch norm and ReLU."""
        return F.relu(self.bn(self.conv(pad_same(x, self.kernel, self.stride))))


class MaxPoolSame(nn.Module):
    """3D max-pool with TensorFlow 'SAME' padding (padded cells never win)."""

    def __init__(self, kernel: Triple, stride: Triple) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad with -inf at the TF positions, then max-pool."""
        return F.max_pool3d(pad_same(x, self.kernel, self.stride, value=-math.inf), self.kernel, self.stride)


class Mixed(nn.Module):
    """An Inception block: four branches concatenated along channels."""

    def __init__(self, name: str, in_ch: int, out: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.branch_0 = Unit3D(f"{name}/Branch_0/Conv3d_0a_1x1", in_ch, out[0])
        self.branch_1a = Unit3D(f"{name}/Branch_1/Conv3d_0a_1x1", in_ch, out[1])
        self.branch_1b = Unit3D(f"{name}/Branch_1/Conv3d_0b_3x3", out[1], out[2], (3, 3, 3))
        self.branch_2a = Unit3D(f"{name}/Branch_2/Conv3d_0a_1x1", in_ch, out[3])
        self.branch_2b = Unit3D(f"{name}/Branch_2/Conv3d_0b_3x3", out[3], out[4], (3, 3, 3))
        self.branch_3_pool = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.branch_3 = Unit3D(f"{name}/Branch_3/Conv3d_0b_1x1", in_ch, out[5])
        self.out_channels = out[0] + out[2] + out[4] + out[5]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the four branches and concatenate them."""
        return torch.cat(
            [
                self.branch_0(x),
                self.branch_1b(self.branch_1a(x)),
                self.branch_2b(self.branch_2a(x)),
                self.branch_3(self.branch_3_pool(x)),
            ],
            dim=1,
        )


class I3D(nn.Module):
    """I3D RGB: input [N, 3, T, 224, 224] in [-1, 1], T >= 8."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        layers: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D("Conv3d_1a_7x7", 3, 64, (7, 7, 7), (2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D("Conv3d_2b_1x1", 64, 64)),
            ("Conv3d_2c_3x3", Unit3D("Conv3d_2c_3x3", 64, 192, (3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPoolSame((1, 3, 3), (1, 2, 2))),
        ]
        channels = 192
        pools = {"Mixed_4b": ("MaxPool3d_4a_3x3", (3, 3, 3)), "Mixed_5b": ("MaxPool3d_5a_2x2", (2, 2, 2))}
        for name, out in _MIXED.items():
            if name in pools:
                pool_name, kernel = pools[name]
                layers.append((pool_name, MaxPoolSame(kernel, (2, 2, 2))))
            block = Mixed(name, channels, out)
            layers.append((name, block))
            channels = block.out_channels
        self.backbone = nn.Sequential(OrderedDict(layers))
        self.logits_conv = nn.Conv3d(channels, num_classes, 1, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 1024-d feature: Mixed_5c averaged over time and space, [N, 1024]."""
        return self.backbone(x).mean(dim=(2, 3, 4))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 400 Kinetics logits, [N, 400]."""
        return self.head(self.backbone(x))

    def head(self, mixed_5c: torch.Tensor) -> torch.Tensor:
        """Logits from Mixed_5c: avg-pool (2,7,7) stride 1 VALID, 1x1x1 conv, mean over time."""
        # The window shrinks only when the map is smaller (e.g. 8 input frames
        # leave T=1), where DeepMind's graph would fail; at 224x224, T>=2 it is exact.
        t, h, w = mixed_5c.shape[2:]
        pooled = F.avg_pool3d(mixed_5c, (min(2, t), min(7, h), min(7, w)), stride=1)
        return self.logits_conv(pooled).mean(dim=(2, 3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the Kinetics logits (see `logits`)."""
        return self.logits(x)


# ---------------------------------------------------------------- inference


def _folded(unit: Unit3D) -> tuple[torch.Tensor, torch.Tensor]:
    """Conv weight and bias with the (scale-free) BatchNorm folded in, for inference."""
    scale = torch.rsqrt(unit.bn.running_var + unit.bn.eps)
    return unit.conv.weight * scale[:, None, None, None, None], unit.bn.bias - unit.bn.running_mean * scale


def _conv(weight: torch.Tensor, bias: torch.Tensor, kernel: Triple, stride: Triple, padding: Triple | int) -> nn.Conv3d:
    conv = nn.Conv3d(weight.shape[1], weight.shape[0], kernel, stride=stride, padding=padding, bias=True)
    conv.weight.data.copy_(weight)
    conv.bias.data.copy_(bias)
    return conv


class FusedUnit3D(nn.Module):
    """Unit3D for inference: BatchNorm folded into the conv; SAME padding done by the conv where symmetric."""

    def __init__(self, unit: Unit3D) -> None:
        super().__init__()
        self.kernel, self.stride = unit.kernel, unit.stride
        # stride 1 and odd kernels: TF SAME padding is symmetric, so no padded copy is needed
        self.symmetric = all(s == 1 and k % 2 == 1 for k, s in zip(unit.kernel, unit.stride))
        padding = tuple((k - 1) // 2 for k in unit.kernel) if self.symmetric else 0
        self.conv = _conv(*_folded(unit), unit.kernel, unit.stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv (+ folded BatchNorm) and ReLU."""
        return F.relu(self.conv(x if self.symmetric else pad_same(x, self.kernel, self.stride)))


class FusedMixed(nn.Module):
    """Mixed block for inference: its three 1x1x1 convs on the same input run as one conv."""

    def __init__(self, block: Mixed) -> None:
        super().__init__()
        weights, biases = zip(*(_folded(u) for u in (block.branch_0, block.branch_1a, block.branch_2a)))
        self.split = [w.shape[0] for w in weights]
        self.stem = _conv(torch.cat(weights), torch.cat(biases), (1, 1, 1), (1, 1, 1), 0)
        self.branch_1b, self.branch_2b = FusedUnit3D(block.branch_1b), FusedUnit3D(block.branch_2b)
        self.branch_3 = FusedUnit3D(block.branch_3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The four branches, concatenated; the 3x3x3 stride-1 SAME max-pool pads symmetrically with -inf."""
        b0, b1, b2 = torch.split(F.relu(self.stem(x)), self.split, dim=1)
        pooled = F.max_pool3d(x, 3, 1, padding=1)
        return torch.cat([b0, self.branch_1b(b1), self.branch_2b(b2), self.branch_3(pooled)], dim=1)


def fuse_for_inference(model: I3D) -> I3D:
    """Return `model` rebuilt for inference (about 2x faster on CPU with channels_last_3d input).

    Same function: BatchNorm folded into the convs, shared-input 1x1x1 convs
    merged, symmetric padding done inside the convs. Outputs equal the
    unfused model's to float32 rounding (tested). Not for training.
    """
    for name, module in list(model.backbone.named_children()):
        if isinstance(module, Unit3D):
            setattr(model.backbone, name, FusedUnit3D(module))
        elif isinstance(module, Mixed):
            setattr(model.backbone, name, FusedMixed(module))
    return model.eval().to(memory_format=torch.channels_last_3d)


def state_dict_from_arrays(model: I3D, arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the npz arrays onto `model`'s state_dict names; every key must be used exactly once."""
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in arrays:
            raise ModelFileError(f"I3D weights lack the array '{key}'", f"delete the file and {FETCH_HINT}")
        used.add(key)
        return torch.from_numpy(np.asarray(arrays[key], dtype=np.float32).copy())

    for name, module in model.named_modules():
        if isinstance(module, Unit3D):
            kernel = take(f"params/{module.scope}/Conv_0/kernel")
            state[f"{name}.conv.weight"] = kernel.permute(4, 3, 0, 1, 2).contiguous()
            state[f"{name}.bn.bias"] = take(f"params/{module.scope}/BatchNorm_0/bias")
            state[f"{name}.bn.running_mean"] = take(f"batch_stats/{module.scope}/BatchNorm_0/mean")
            state[f"{name}.bn.running_var"] = take(f"batch_stats/{module.scope}/BatchNorm_0/var")
    logits_kernel = take("params/Logits/Conv3d_0c_1x1/Conv_0/kernel")
    state["logits_conv.weight"] = logits_kernel.permute(4, 3, 0, 1, 2).contiguous()
    state["logits_conv.bias"] = take("params/Logits/Conv3d_0c_1x1/Conv_0/bias")
    unused = sorted(set(arrays.keys()) - used)
    if unused:
        raise ModelFileError(
            f"I3D weights hold {len(unused)} arrays the model does not use (first: '{unused[0]}'); "
            "the file is not DeepMind's I3D RGB Kinetics-400",
            f"delete the file and {FETCH_HINT}",
        )
    return state


def i3d_from_arrays(arrays: Mapping[str, np.ndarray]) -> I3D:
    """Build an I3D in eval mode from DeepMind's arrays; strict on keys and shapes."""
    model = I3D()
    state = state_dict_from_arrays(model, arrays)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(
            f"I3D weights do not fit the architecture: {str(exc).splitlines()[0]}",
            f"delete the file and {FETCH_HINT}",
        ) from exc
    return model.eval()


def load_i3d(model_dir: Path | str | None = None) -> I3D:
    """Load the verified I3D RGB Kinetics-400 weights into a PyTorch I3D (eval mode, CPU)."""
    path = verified_path(I3D_KINETICS400.key, model_dir)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read I3D weights {path}: {exc}", f"delete it and {FETCH_HINT}") from exc
    model = i3d_from_arrays(arrays)
    log.info("loaded I3D RGB Kinetics-400 from %s (%d arrays)", path, len(arrays))
    return model
