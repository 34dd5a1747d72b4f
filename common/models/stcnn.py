"""The snippet feature extractors (I3D, R(2+1)D) behind one interface: preprocess, encode, classify."""

from __future__ import annotations

import abc
import logging
from collections import Counter
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from semiofed.common.errors import ModelFileError, SemiofedError, VideoError
from semiofed.common.models import i3d, r2plus1d
from semiofed.common.models.registry import (
    FETCH_HINT,
    I3D_KINETICS400,
    KINETICS400_LABELS,
    R2PLUS1D_18_KINETICS400,
    verified_path,
)

log = logging.getLogger(__name__)

STCNN_CHOICES = ("i3d", "r2plus1d")
DEFAULT_SNIPPET_FRAMES = 8  # ~0.27-0.53 s of video: short enough to follow a movement
ENCODE_BATCH = 8  # snippets per forward pass; 8 x 8 x 224 x 224 floats is ~40 MB
_RESIZE_CHUNK = 64  # frames resized at once, to bound float memory on large frames


class SnippetEncoder(abc.ABC):
    """A frozen spatiotemporal CNN that turns RGB snippets into feature vectors."""

    name: str
    feature_dim: int
    model_keys: tuple[str, ...]  # registry keys of the weights used, for provenance
    classify_frames: int  # frames sampled from a clip for the Kinetics self-test

    def __init__(self, net: nn.Module, device: torch.device, snippet_frames: int = DEFAULT_SNIPPET_FRAMES) -> None:
        self.net = net.to(device).eval()
        self.device = device
        self.snippet_frames = snippet_frames
        self._labels: list[str] | None = None

    @abc.abstractmethod
    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """Turn uint8 RGB frames [N, T, H, W, 3] into the network input [N, 3, T, h, w] on `device`."""

    @abc.abstractmethod
    def _load_labels(self) -> list[str]:
        """Return the 400 Kinetics class names in the network's output order."""

    def _classify_input(self, frames: np.ndarray) -> torch.Tensor:
        return self.preprocess(frames)

    def labels(self) -> list[str]:
        """Return the 400 Kinetics class names in the order of `classify`'s output."""
        if self._labels is None:
            self._labels = self._load_labels()
        return self._labels

    def encode(self, frames: np.ndarray, batch_size: int = ENCODE_BATCH) -> np.ndarray:
        """Return float32 features [N, feature_dim] for uint8 RGB snippets [N, T, H, W, 3]."""
        frames = _check_frames(frames)
        out = [np.zeros((0, self.feature_dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(frames), batch_size):
                x = self.preprocess(frames[start : start + batch_size])
                out.append(self.net.features(x).float().cpu().numpy())
        return np.concatenate(out)

    def encode_window(self, frames: np.ndarray, n_snippets: int) -> np.ndarray:
        """Return float32 features [n_snippets, feature_dim]: the feature of the window `frames` seen as one clip.

        `frames` [T, H, W, 3] uint8 RGB holds n_snippets snippets back to back. The network sees the whole
        window as one clip (a 32-frame window is ~2 s, close to the 64 frames at 25 fps Kinetics trained it
        on) and its clip feature (pooled over time and space, as for Kinetics) is every snippet's feature: a
        snippet carries the movement around it, and no feature depends on where in a clip its snippet fell.
        """
        clip = _check_frames(frames[None])
        if n_snippets < 1 or clip.shape[1] < n_snippets:
            raise ValueError(f"cannot split {clip.shape[1]} frames into {n_snippets} snippets")
        with torch.inference_mode():
            feature = self.net.features(self.preprocess(clip)).float().cpu().numpy()
        return np.repeat(feature, n_snippets, axis=0)

    def classify(self, frames: np.ndarray) -> np.ndarray:
        """Return the 400 Kinetics class probabilities (float32) for one clip [1, T, H, W, 3]."""
        frames = _check_frames(frames)
        if len(frames) != 1:
            raise ValueError(f"classify takes one clip [1, T, H, W, 3], got {len(frames)} clips")
        with torch.inference_mode():
            logits = self.net.logits(self._classify_input(frames))
        return torch.softmax(logits.float(), dim=-1)[0].cpu().numpy()


class I3DEncoder(SnippetEncoder):
    """DeepMind's I3D RGB (Kinetics-400): 1024-d Mixed_5c features of 224x224 frames in [-1, 1]."""

    name = "i3d"
    feature_dim = i3d.FEATURE_DIM
    model_keys = (I3D_KINETICS400.key,)
    classify_frames = 64  # the known-answer protocol: 64 frames over the clip
    crop = 224
    short_side = 224  # features: keep as much of the frame as the crop allows
    classify_short_side = 256  # Kinetics evaluation: short side 256, centre crop 224

    def __init__(self, net: nn.Module, device: torch.device, model_dir: Path | str | None = None) -> None:
        super().__init__(net, device)
        self._model_dir = model_dir

    def preprocess(self, frames: np.ndarray, short_side: int | None = None) -> torch.Tensor:
        """Resize the short side (default 224), centre-crop 224x224, scale to [-1, 1]; [N, 3, T, 224, 224]."""
        frames = _check_frames(frames)
        n, t = frames.shape[:2]
        flat = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).reshape(n * t, *frames.shape[2:])
        chunks = [
            _resize_short_crop(flat[i : i + _RESIZE_CHUNK], short_side or self.short_side, self.crop)
            for i in range(0, n * t, _RESIZE_CHUNK)
        ]
        x = torch.cat(chunks).div_(127.5).sub_(1.0)
        # channels_last_3d: the layout oneDNN's 3D convolutions run fastest on
        return x.reshape(n, t, 3, self.crop, self.crop).permute(0, 2, 1, 3, 4).contiguous(
            memory_format=torch.channels_last_3d)

    def _classify_input(self, frames: np.ndarray) -> torch.Tensor:
        return self.preprocess(frames, short_side=self.classify_short_side)

    def _load_labels(self) -> list[str]:
        path = verified_path(KINETICS400_LABELS.key, self._model_dir)
        labels = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if len(labels) != i3d.NUM_CLASSES:
            raise ModelFileError(f"{path} holds {len(labels)} labels, expected 400", f"delete it and {FETCH_HINT}")
        return labels


class R2Plus1DEncoder(SnippetEncoder):
    """torchvision's R(2+1)D-18 (Kinetics-400): 512-d features, torchvision's 112x112 preprocessing."""

    name = "r2plus1d"
    feature_dim = r2plus1d.FEATURE_DIM
    model_keys = (R2PLUS1D_18_KINETICS400.key,)
    classify_frames = 16  # torchvision's evaluation clip length

    def __init__(self, net: nn.Module, device: torch.device) -> None:
        super().__init__(net, device)
        # Resize (128, 171) without antialias, centre crop 112, Kinetics mean/std (torchvision's preset).
        self._transform = r2plus1d.WEIGHTS.transforms()

    def preprocess(self, frames: np.ndarray) -> torch.Tensor:
        """Apply torchvision's KINETICS400_V1 transform; [N, 3, T, 112, 112]."""
        frames = _check_frames(frames)
        vid = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 1, 4, 2, 3)
        return self._transform(vid.contiguous())

    def _load_labels(self) -> list[str]:
        return list(r2plus1d.WEIGHTS.meta["categories"])


def load_stcnn(
    name: str = "i3d",
    model_dir: Path | str | None = None,
    device: str | torch.device | None = None,
    allow_random_weights: bool = False,
) -> SnippetEncoder:
    """Load a snippet encoder by name ("i3d" or "r2plus1d") with verified weights.

    `allow_random_weights=True` is for tests only: a missing R(2+1)D file then
    gives random weights with a logged warning instead of an error.
    """
    dev = torch.device(device) if device is not None else _default_device()
    if name == "i3d":
        return I3DEncoder(i3d.fuse_for_inference(i3d.load_i3d(model_dir)), dev, model_dir)
    if name == "r2plus1d":
        return R2Plus1DEncoder(r2plus1d.load_r2plus1d(model_dir, allow_random_weights=allow_random_weights), dev)
    raise SemiofedError(f"unknown STCNN '{name}'", f"use one of: {', '.join(STCNN_CHOICES)}")


def kinetics_top_k(
    encoder: SnippetEncoder, video: Path | str, k: int = 5, num_frames: int | None = None
) -> list[tuple[str, float]]:
    """Classify a whole clip (frames spread evenly over it) and return the top-k (label, probability)."""
    frames = _read_even_frames(Path(video), num_frames or encoder.classify_frames)
    probs = encoder.classify(frames[None])
    labels = encoder.labels()
    order = np.argsort(probs)[::-1][:k]
    return [(labels[i], float(probs[i])) for i in order]


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _check_frames(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[-1] != 3:
        got = f"{type(frames).__name__} {getattr(frames, 'dtype', '')} {getattr(frames, 'shape', '')}"
        raise ValueError(f"snippets must be a uint8 RGB array [N, T, H, W, 3], got {got}")
    return frames


def _resize_short_crop(frames: torch.Tensor, short_side: int, crop: int) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float [F, 3, crop, crop] in 0..255: resize the short side, centre crop."""
    x = frames.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = short_side / min(h, w)
    size = (max(short_side, round(h * scale)), max(short_side, round(w * scale)))
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
    top, left = (size[0] - crop) // 2, (size[1] - crop) // 2
    return x[:, :, top : top + crop, left : left + crop]


def _read_even_frames(path: Path, count: int) -> np.ndarray:
    """Decode `count` RGB uint8 frames spread evenly over a video: [count, H, W, 3]."""
    fix = "check the path and that FFmpeg can decode the file"
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise VideoError(f"{path} has no video stream", fix)
            stream = container.streams.video[0]
            total = sum(1 for packet in container.demux(stream) if packet.size)
        if total == 0:
            raise VideoError(f"{path} has no video frames", fix)
        wanted = Counter(np.linspace(0, total - 1, count).round().astype(int).tolist())
        last = max(wanted)
        frames: list[np.ndarray] = []
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    frames.extend([frame.to_ndarray(format="rgb24")] * wanted[index])
                if index >= last:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise VideoError(f"cannot decode {path}: {exc}", fix) from exc
    if not frames:
        raise VideoError(f"{path} has no decodable video frames", fix)
    if len(frames) < count:  # the container promised more packets than it decoded
        log.debug("%s: decoded %d of %d frames, repeating the last", path, len(frames), count)
        frames.extend([frames[-1]] * (count - len(frames)))
    return np.stack(frames)
