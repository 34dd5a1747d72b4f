"""Turn one video into de-identified arrays: decode -> ROI crop -> rotation -> landmarks + STCNN features.

The one de-identification pipeline, used by `site prepare`, `predict` and
the tests. Frames go through it window by window (`VideoPipeline`): crop to
the ROI, choose and apply the rotation, then the pose, hand and face streams
and the STCNN on the upright frames (by default each window as one clip,
cropped to the patient the pose found: client/deid/patient_crop.py). Stages run concurrently, one
single-worker executor each (pose and rotation, hands, face, STCNN), chained
per window with futures, so the time per video approaches the slowest stage
rather than the sum. Nothing is written here; the caller builds and stores
the record.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from semiofed.client.deid.landmarks import (
    STREAM_CLASSES,
    Arrays,
    VideoStream,
    check_frames,
    detection_rate,
    empty_arrays,
)
from semiofed.client.deid.patient_crop import PatientCropper
from semiofed.client.deid.rotation import PoseProbe, RotationTracker, crop_roi, rotate
from semiofed.client.deid.video import DEFAULT_MAX_SIDE, iter_frames, probe
from semiofed.common.constants import (
    DEFAULT_DEID_STREAMS,
    DEID_STREAMS,
    LANDMARK_STREAMS,
    STCNN_INPUT_FRAME,
    STCNN_INPUT_PATIENT,
    STCNN_INPUTS,
    STREAM_POSE,
    STREAM_STCNN,
)
from semiofed.common.errors import SemiofedError, VideoError
from semiofed.common.models.registry import file_sha256
from semiofed.common.models.stcnn import SnippetEncoder, load_stcnn
from semiofed.common.records import schema as rec

log = logging.getLogger(__name__)

ROI = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the frame
ProgressFn = Callable[[float], None]  # called with the seconds of video done


@dataclass(frozen=True)
class DeidentifyConfig:
    """What every record of a site is computed with (GESTURES defaults)."""

    fps: float = 15.0  # GESTURES samples video at 15 fps
    snippet_frames: int = 8  # ~0.53 s snippets, as GESTURES
    stcnn: str = "i3d"
    # snippets per pipeline window: the rotation is chosen per window (~2 s); the STCNN sees a window as one clip
    snippets_per_window: int = 4
    # what the STCNN sees: the patient's square over the window (default), or GESTURES' centre crop per snippet
    stcnn_input: str = STCNN_INPUT_PATIENT
    max_side: int = DEFAULT_MAX_SIDE
    # windows in flight: bounds memory while keeping every stage busy
    max_inflight: int = 3
    allow_random_weights: bool = False  # test-only, for R(2+1)D without its weights file
    # What to compute. Pose is required: it picks the rotation and tells whether
    # anyone is in the video. Without STREAM_STCNN (a keypoints-only site) no
    # STCNN is loaded and the snippet features have width 0; a dropped
    # landmark stream gives zeros and False masks.
    streams: tuple[str, ...] = DEFAULT_DEID_STREAMS  # the face only when asked for (it is biometric)

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.snippet_frames < 1 or self.snippets_per_window < 1:
            raise SemiofedError(f"bad de-identification settings {self}", "use positive fps, snippet and window sizes")
        if self.stcnn_input not in STCNN_INPUTS:
            raise SemiofedError(f"unknown STCNN input '{self.stcnn_input}'", f"use one of: {', '.join(STCNN_INPUTS)}")
        unknown = sorted(set(self.streams) - set(DEID_STREAMS))
        if unknown or STREAM_POSE not in self.streams:
            raise SemiofedError(
                f"cannot de-identify with streams {list(self.streams)}: "
                + (f"unknown {unknown}" if unknown else f"'{STREAM_POSE}' is missing (it chooses the rotation)"),
                f"use '{STREAM_POSE}' and any of {list(DEID_STREAMS[1:])}",
            )
        object.__setattr__(self, "streams", tuple(s for s in DEID_STREAMS if s in self.streams))

    @property
    def window_frames(self) -> int:
        """Frames per pipeline window."""
        return self.snippet_frames * self.snippets_per_window

    @property
    def landmark_streams(self) -> tuple[str, ...]:
        """The MediaPipe streams to run, in LANDMARK_STREAMS order."""
        return tuple(s for s in LANDMARK_STREAMS if s in self.streams)


@dataclass
class DeidentifiedVideo:
    """The arrays of one video plus what the record needs to describe them."""

    arrays: dict[str, np.ndarray]
    fps: float
    duration_s: float
    frame_size: tuple[int, int]  # width, height after the ROI crop, before rotation
    detection_rate: dict[str, float]
    models: dict[str, str] = field(default_factory=dict)
    stcnn: str = ""  # the STCNN that made the snippet features; "" when none was computed
    stcnn_input: str = ""  # how it saw the frames (STCNN_INPUTS); "" when none was computed


@dataclass
class Window:
    """One processed window of consecutive frames."""

    times: np.ndarray  # [N] float64 seconds
    frames: np.ndarray  # [N, H, W, 3] after ROI crop and rotation: what the landmarks refer to
    arrays: Arrays  # every landmark schema key and ROTATION, one row per frame
    features: np.ndarray  # [N // snippet_frames, D] float32 STCNN features (D = 0 without the STCNN)


class _PendingWindow:
    """The futures of one submitted window."""

    def __init__(self, times: np.ndarray, pose: Future, others: dict[str, Future], stcnn: Future | None,
                 n_snippets: int) -> None:
        self.times = times
        self._pose = pose
        self._others = others
        self._stcnn = stcnn
        self._n_snippets = n_snippets

    def result(self) -> Window:
        """Wait for every stage of the window."""
        frames, arrays = self._pose.result()
        for name in LANDMARK_STREAMS[1:]:
            future = self._others.get(name)
            arrays.update(future.result() if future else empty_arrays(name, len(frames)))
        features = self._stcnn.result() if self._stcnn else np.zeros((self._n_snippets, 0), np.float32)
        return Window(self.times, frames, arrays, features)

    def cancel(self) -> list[Future]:
        """Cancel the stages not yet started; return those that are still running."""
        futures = [self._pose, *self._others.values(), *([self._stcnn] if self._stcnn else [])]
        return [f for f in futures if not f.cancel()]


class VideoPipeline:
    """Fresh landmarkers and rotation state for one video; its windows go in, in order, one after another."""

    def __init__(self, deidentifier: Deidentifier, *, roi: Sequence[float] | None = None, rotation: int = 0) -> None:
        self._config = deidentifier.config
        self._executors = deidentifier.executors
        self._encoder = deidentifier.encoder
        self.roi = tuple(roi) if roi is not None else None
        self.tracker = RotationTracker(None, rotation)
        self._crop = PatientCropper()
        self.frame_size = (0, 0)  # width, height of the latest window after the ROI crop
        self._streams: dict[str, VideoStream] = {}
        try:
            for name in self._config.landmark_streams:
                self._streams[name] = STREAM_CLASSES[name](deidentifier.model_dir)
            self.tracker.probe = PoseProbe(deidentifier.model_dir)
        except Exception:
            self.close()
            raise

    def submit(self, frames: np.ndarray, times_s: np.ndarray) -> _PendingWindow:
        """Queue one window: frames [N, H, W, 3] uint8 RGB at times_s [N] seconds, later than the last window's."""
        frames = crop_roi(check_frames(frames), self.roi)
        times = np.asarray(times_s, dtype=np.float64)
        stamps = np.round(times * 1000.0).astype(np.int64)
        self.frame_size = (int(frames.shape[2]), int(frames.shape[1]))
        ex = self._executors
        pose = ex[STREAM_POSE].submit(self._pose_step, frames, stamps)
        others = {name: ex[name].submit(self._stream_step, stream, pose, stamps)
                  for name, stream in self._streams.items() if name != STREAM_POSE}
        stcnn = ex[STREAM_STCNN].submit(self._stcnn_step, self._encoder, pose) if self._encoder else None
        return _PendingWindow(times, pose, others, stcnn, len(frames) // self._config.snippet_frames)

    def process_window(self, frames: np.ndarray, times_s: np.ndarray) -> Window:
        """Run one window through every stage and wait for it."""
        return self.submit(frames, times_s).result()

    def _pose_step(self, frames: np.ndarray, stamps: np.ndarray) -> tuple[np.ndarray, Arrays]:
        rotation = self.tracker.choose(frames)
        upright = rotate(frames, rotation)
        arrays = self._streams[STREAM_POSE].process(upright, stamps)
        self.tracker.observe(arrays, upright.shape[2], upright.shape[1])
        arrays[rec.ROTATION] = np.full(len(frames), rotation, dtype=np.int16)
        return upright, arrays

    @staticmethod
    def _stream_step(stream: VideoStream, pose: Future, stamps: np.ndarray) -> Arrays:
        return stream.process(pose.result()[0], stamps)

    def _stcnn_step(self, encoder: SnippetEncoder, pose: Future) -> np.ndarray:
        upright, arrays = pose.result()
        snippet = self._config.snippet_frames
        whole = (len(upright) // snippet) * snippet
        if whole == 0:
            return np.zeros((0, encoder.feature_dim), dtype=np.float32)
        if self._config.stcnn_input == STCNN_INPUT_FRAME:
            return encoder.encode(upright[:whole].reshape(whole // snippet, snippet, *upright.shape[1:]))
        # the patient's square from the whole window's pose (the crop the STCNN sees is of the frames used)
        return encoder.encode_window(self._crop(upright[:whole], arrays), whole // snippet)

    def close(self) -> None:
        """Release every landmarker."""
        for stream in self._streams.values():
            stream.close()
        if self.tracker.probe is not None:
            self.tracker.probe.close()

    def __enter__(self) -> VideoPipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _batches(frames: Iterable[tuple[float, np.ndarray]], size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Group (time_s, frame) pairs into windows (frames [n, H, W, 3], times [n]) of `size`, the last one shorter."""
    times: list[float] = []
    batch: list[np.ndarray] = []
    for t, frame in frames:
        times.append(t)
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch), np.asarray(times, dtype=np.float64)
            times, batch = [], []
    if batch:
        yield np.stack(batch), np.asarray(times, dtype=np.float64)


class Deidentifier:
    """Holds the loaded STCNN and the stage threads; makes fresh landmarkers per video (no state across videos)."""

    def __init__(self, config: DeidentifyConfig | None = None, model_dir: Path | str | None = None) -> None:
        self.config = config or DeidentifyConfig()
        self.model_dir = model_dir
        self.encoder: SnippetEncoder | None = None
        if STREAM_STCNN in self.config.streams:
            self.encoder = load_stcnn(
                self.config.stcnn, model_dir, allow_random_weights=self.config.allow_random_weights
            )
        keys = [STREAM_CLASSES[s].model_key for s in self.config.landmark_streams]
        keys += list(self.encoder.model_keys) if self.encoder else []
        self.models = {key: file_sha256(key, model_dir) for key in keys}
        stages = self.config.landmark_streams + ((STREAM_STCNN,) if self.encoder else ())
        self.executors = {name: ThreadPoolExecutor(1, thread_name_prefix=f"semiofed-{name}") for name in stages}

    def close(self) -> None:
        """Stop the stage threads."""
        for executor in self.executors.values():
            executor.shutdown(wait=True)

    def __enter__(self) -> Deidentifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_video(self, *, roi: Sequence[float] | None = None, rotation: int = 0) -> VideoPipeline:
        """Start one video's landmarkers: crop to roi, start searching rotations from `rotation` (degrees clockwise)."""
        return VideoPipeline(self, roi=roi, rotation=rotation)

    def run(self, video: Path, *, roi: ROI | None = None, progress: ProgressFn | None = None) -> DeidentifiedVideo:
        """De-identify one video into schema arrays (see common/records/schema.py)."""
        video = Path(video)
        duration = probe(video).duration_s
        frames = iter_frames(video, fps=self.config.fps, max_side=self.config.max_side)
        return self.run_frames(frames, roi=roi, progress=progress, duration_s=duration, source=f"video {video}")

    def run_frames(
        self,
        frames: Iterable[tuple[float, np.ndarray]],
        *,
        roi: Sequence[float] | None = None,
        rotation: int = 0,
        progress: ProgressFn | None = None,
        duration_s: float = 0.0,
        source: str = "the frames",
    ) -> DeidentifiedVideo:
        """De-identify decoded (time_s, RGB uint8 [H, W, 3]) frames at the config's fps, window by window."""
        windows: list[Window] = []
        pending: deque[_PendingWindow] = deque()

        def collect_oldest() -> None:
            windows.append(pending.popleft().result())
            if progress:
                progress(float(windows[-1].times[-1]))

        with self.open_video(roi=roi, rotation=rotation) as video:
            try:
                for batch, times in _batches(frames, self.config.window_frames):
                    pending.append(video.submit(batch, times))
                    while len(pending) > self.config.max_inflight:
                        collect_oldest()
                while pending:
                    collect_oldest()
            finally:
                # the landmarkers close on leaving: no stage may still be using them
                wait([future for window in pending for future in window.cancel()])
            frame_size = video.frame_size
        return self._assemble(windows, duration_s, frame_size, source)

    def _assemble(self, windows: list[Window], duration_s: float, frame_size: tuple[int, int],
                  source: str) -> DeidentifiedVideo:
        snippet, fps = self.config.snippet_frames, self.config.fps
        if not windows:
            raise VideoError(f"{source} has no frames", "re-export the video")
        if sum(len(w.times) for w in windows) < snippet:
            raise VideoError(
                f"{source} is shorter than one {snippet}-frame snippet at {fps:g} fps",
                "use a recording of at least one second",
            )
        arrays = {key: np.concatenate([w.arrays[key] for w in windows]) for key in windows[0].arrays}
        arrays[rec.FRAME_TIMES] = np.concatenate([w.times for w in windows]).astype(np.float32)
        features = np.concatenate([w.features for w in windows]).astype(np.float32)
        starts = np.arange(len(features), dtype=np.float32) * snippet / fps
        arrays[rec.SNIPPET_FEATURES] = features
        arrays[rec.SNIPPET_TIMES] = np.stack([starts, starts + snippet / fps], axis=1).astype(np.float32)
        rec.validate_arrays(arrays)
        return DeidentifiedVideo(
            arrays=arrays,
            fps=fps,
            duration_s=float(max(duration_s, arrays[rec.FRAME_TIMES][-1] + 1.0 / fps)),
            frame_size=frame_size,
            detection_rate={s: r for s, r in detection_rate(arrays).items() if s in self.config.landmark_streams},
            models=dict(self.models),
            stcnn=self.encoder.name if self.encoder else "",
            stcnn_input=self.config.stcnn_input if self.encoder else "",
        )
