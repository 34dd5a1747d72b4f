"""Turn one video into de-identified arrays: decode -> (ROI, rotation) -> keypoints + STCNN features.

Stages run concurrently, one single-worker executor each (pose and rotation,
hands, face, STCNN), chained per window of frames with futures, so the time
per video approaches the slowest stage rather than the sum. Nothing is
written here; the caller builds and stores the record.
"""

from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from semiofed.client.deid import keypoints as kp
from semiofed.client.deid.video import DEFAULT_MAX_SIDE, iter_frames, probe
from semiofed.common.records import schema as rec
from semiofed.common.errors import SemiofedError, VideoError
from semiofed.common.models.registry import file_sha256
from semiofed.common.models.stcnn import load_stcnn

log = logging.getLogger(__name__)

STREAMS = ("pose", "hands", "face")
_STREAM_MODEL = {"pose": "pose_landmarker_full", "hands": "hand_landmarker", "face": "face_landmarker"}


@dataclass(frozen=True)
class DeidentifyConfig:
    """What every record of a site is computed with (GESTURES defaults)."""

    fps: float = 15.0  # GESTURES samples video at 15 fps
    snippet_frames: int = 8  # ~0.53 s snippets, as GESTURES
    stcnn: str = "i3d"
    # snippets per pipeline window: the rotation is chosen per window (~2 s)
    snippets_per_window: int = 4
    max_side: int = DEFAULT_MAX_SIDE
    # windows in flight: bounds memory while keeping every stage busy
    max_inflight: int = 3
    allow_random_weights: bool = False  # test-only, for R(2+1)D without its weights file

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.snippet_frames < 1 or self.snippets_per_window < 1:
            raise SemiofedError(f"bad de-identification settings {self}", "use positive fps, snippet and window sizes")

    @property
    def window_frames(self) -> int:
        return self.snippet_frames * self.snippets_per_window


@dataclass
class DeidentifiedVideo:
    """The arrays of one video plus what the record needs to describe them."""

    arrays: dict[str, np.ndarray]
    fps: float
    duration_s: float
    frame_size: tuple[int, int]  # width, height after the ROI crop, before rotation
    detection_rate: dict[str, float]
    models: dict[str, str] = field(default_factory=dict)


ProgressFn = Callable[[float], None]


class Deidentifier:
    """Holds the loaded STCNN; makes fresh landmarkers per video (deterministic, no state across videos)."""

    def __init__(self, config: DeidentifyConfig | None = None, model_dir: Path | str | None = None) -> None:
        self.config = config or DeidentifyConfig()
        self.model_dir = model_dir
        self.encoder = load_stcnn(
            self.config.stcnn, model_dir, allow_random_weights=self.config.allow_random_weights
        )
        keys = [_STREAM_MODEL[s] for s in STREAMS] + list(self.encoder.model_keys)
        self.models = {key: file_sha256(key, model_dir) for key in keys}
        self._executors = {name: ThreadPoolExecutor(1, thread_name_prefix=f"semiofed-{name}")
                           for name in ("pose", "hands", "face", "stcnn")}

    def close(self) -> None:
        """Stop the stage threads."""
        for executor in self._executors.values():
            executor.shutdown(wait=True)

    def __enter__(self) -> "Deidentifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _windows(self, video: Path, roi: tuple[float, float, float, float] | None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        size = self.config.window_frames
        times: list[float] = []
        frames: list[np.ndarray] = []
        for t, frame in iter_frames(video, fps=self.config.fps, max_side=self.config.max_side):
            times.append(t)
            frames.append(frame)
            if len(frames) == size:
                yield self._crop(np.stack(frames), roi), np.asarray(times, dtype=np.float64)
                times, frames = [], []
        if frames:
            yield self._crop(np.stack(frames), roi), np.asarray(times, dtype=np.float64)

    @staticmethod
    def _crop(frames: np.ndarray, roi: tuple[float, float, float, float] | None) -> np.ndarray:
        return kp.crop_roi(frames, roi) if roi is not None else frames

    def run(self, video: Path, *, roi: tuple[float, float, float, float] | None = None,
            progress: ProgressFn | None = None) -> DeidentifiedVideo:
        """De-identify one video into schema arrays (see common/records/schema.py)."""
        video = Path(video)
        duration = probe(video).duration_s
        snippet = self.config.snippet_frames
        pose, hands, face = kp.PoseStream(self.model_dir), kp.HandStream(self.model_dir), kp.FaceStream(self.model_dir)
        probe_landmarker = kp.PoseProbe(self.model_dir)
        tracker = kp.RotationTracker(probe_landmarker)
        ex = self._executors

        def pose_step(frames: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
            rotation = tracker.choose(frames)
            upright = kp.rotate(frames, rotation)
            arrays = pose.process(upright, stamps)
            tracker.observe(arrays, upright.shape[2], upright.shape[1])
            arrays[rec.ROTATION] = np.full(len(frames), rotation, dtype=np.int16)
            return upright, arrays

        def stcnn_step(upright_future: Future) -> np.ndarray:
            upright = upright_future.result()[0]
            whole = (len(upright) // snippet) * snippet
            if whole == 0:
                return np.zeros((0, self.encoder.feature_dim), dtype=np.float32)
            clips = upright[:whole].reshape(whole // snippet, snippet, *upright.shape[1:])
            return self.encoder.encode(clips)

        pending: deque[tuple[np.ndarray, Future, Future, Future, Future]] = deque()
        parts: list[tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]] = []
        frame_size = (0, 0)

        def collect_oldest() -> None:
            times, pose_f, hands_f, face_f, stcnn_f = pending.popleft()
            upright, arrays = pose_f.result()
            arrays.update(hands_f.result())
            arrays.update(face_f.result())
            parts.append((times, arrays, stcnn_f.result()))
            if progress:
                progress(float(times[-1]))

        try:
            for frames, times in self._windows(video, roi):
                frame_size = (int(frames.shape[2]), int(frames.shape[1]))
                stamps = np.round(times * 1000.0).astype(np.int64)
                pose_f = ex["pose"].submit(pose_step, frames, stamps)
                hands_f = ex["hands"].submit(lambda f=pose_f, s=stamps: hands.process(f.result()[0], s))
                face_f = ex["face"].submit(lambda f=pose_f, s=stamps: face.process(f.result()[0], s))
                stcnn_f = ex["stcnn"].submit(stcnn_step, pose_f)
                pending.append((times, pose_f, hands_f, face_f, stcnn_f))
                while len(pending) > self.config.max_inflight:
                    collect_oldest()
            while pending:
                collect_oldest()
        finally:
            for future_set in pending:
                for future in future_set[1:]:
                    future.cancel()
            for stream in (pose, hands, face, probe_landmarker):
                stream.close()
        if not parts:
            raise VideoError(f"video {video} has no frames", "re-export the video")
        if sum(len(p[0]) for p in parts) < snippet:
            raise VideoError(
                f"video {video} is shorter than one {snippet}-frame snippet at {self.config.fps:g} fps",
                "use a recording of at least one second",
            )
        arrays = {key: np.concatenate([p[1][key] for p in parts]) for key in parts[0][1]}
        arrays[rec.FRAME_TIMES] = np.concatenate([p[0] for p in parts]).astype(np.float32)
        features = np.concatenate([p[2] for p in parts]).astype(np.float32)
        starts = np.arange(len(features), dtype=np.float32) * snippet / self.config.fps
        arrays[rec.SNIPPET_FEATURES] = features
        arrays[rec.SNIPPET_TIMES] = np.stack([starts, starts + snippet / self.config.fps], axis=1).astype(np.float32)
        rec.validate_arrays(arrays)
        return DeidentifiedVideo(
            arrays=arrays,
            fps=self.config.fps,
            duration_s=float(max(duration, arrays[rec.FRAME_TIMES][-1] + 1.0 / self.config.fps)),
            frame_size=frame_size,
            detection_rate=kp.detection_rate(arrays),
            models=dict(self.models),
        )
