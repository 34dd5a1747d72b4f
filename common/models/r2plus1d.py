"""R(2+1)D-18 (torchvision, Kinetics-400): 512-d snippet features from the verified weights file."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path

import torch
from torch import nn
from torchvision.models.video import R2Plus1D_18_Weights, r2plus1d_18
from torchvision.models.video.resnet import VideoResNet

from semiofed.common.errors import ModelFileError
from semiofed.common.models.registry import FETCH_HINT, R2PLUS1D_18_KINETICS400, verified_path

log = logging.getLogger(__name__)

FEATURE_DIM = 512
WEIGHTS = R2Plus1D_18_Weights.KINETICS400_V1  # preprocessing and categories; the file comes from the model dir


class R2Plus1D(nn.Module):
    """torchvision's r2plus1d_18 with a `features` view (the 512-d input of fc)."""

    def __init__(self, net: VideoResNet) -> None:
        super().__init__()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 512-d feature (global average pool before fc), [N, 512]."""
        n = self.net
        x = n.layer4(n.layer3(n.layer2(n.layer1(n.stem(x)))))
        return n.avgpool(x).flatten(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Return the 400 Kinetics logits, [N, 400]."""
        return self.net.fc(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the Kinetics logits (see `logits`)."""
        return self.logits(x)


def load_r2plus1d(model_dir: Path | str | None = None, *, allow_random_weights: bool = False) -> R2Plus1D:
    """Load R(2+1)D-18 with the verified Kinetics-400 weights (eval mode, CPU).

    `allow_random_weights=True` is for tests only: when the weights file is
    missing or bad it builds the network with random weights and logs a warning.
    """
    net = r2plus1d_18(weights=None)
    try:
        path = verified_path(R2PLUS1D_18_KINETICS400.key, model_dir)
    except ModelFileError as exc:
        if not allow_random_weights:
            raise ModelFileError(
                f"{exc.what} (R(2+1)D-18 is an optional model)",
                "run `semiofed models fetch --include-optional`, or choose the I3D extractor (`--stcnn i3d`)",
            ) from exc
        log.warning("R(2+1)D-18 uses RANDOM weights (allow_random_weights=True): %s", exc.what)
        return R2Plus1D(net).eval()
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state, strict=True)
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as exc:
        raise ModelFileError(
            f"cannot load R(2+1)D-18 weights {path}: {str(exc).splitlines()[0]}", f"delete it and {FETCH_HINT}"
        ) from exc
    log.info("loaded R(2+1)D-18 Kinetics-400 from %s", path)
    return R2Plus1D(net).eval()
