"""Turn one video into de-identified arrays: decode -> ROI crop -> patient search -> rotation -> landmarks + STCNN.

The one de-identification pipeline, used by `site prepare`, `predict` and
the tests. Frames go through it window by window (`VideoPipeline`): crop to
the manifest's ROI; find the patient (client/deid/patient_search.py: the
contrast enhancement, the region of the frame and the detection thresholds
under which the pose is found, searched on the first window and again when
the patient is lost); choose and apply the rotation; then the pose, hand and
face streams on the patient's region (their landmarks mapped back to the
frame) and the STCNN on the upright frames (by default each window as one
clip, cropped to the patient the pose found: client/deid/patient_crop.py).
Implausible poses are dropped and left/right flips repaired at the end
(client/deid/landmark_quality.py). Stages run concurrently, one
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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from semiofed.client.deid.landmarks import (
    STREAM_CLASSES,
    Arrays,
    PoseStream,
    VideoStream,
    check_frames,
    detection_rate,
    empty_arrays,
)
from semiofed.client.deid.landmark_quality import clean_pose, quality
from semiofed.client.deid.patient_crop import PatientCropper
from semiofed.client.deid.patient_search import (
    LENIENT,
    WHOLE,
    Box,
    RegionTracker,
    View,
    crop_box,
    landmark_box,
    search,
    to_frame,
    unturn,
)
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
    # Finding the patient (client/deid/patient_search.py): try the contrast enhancement, and regions of the frame
    enhance: bool = True
    find_patient: bool = True

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
    capture: dict[str, object] = field(default_factory=dict)  # how the patient was found (enhancement, region)
    quality: dict[str, dict[str, object]] = field(default_factory=dict)  # per stream (landmark_quality.quality)


@dataclass
class Window:
    """One processed window of consecutive frames."""

    times: np.ndarray  # [N] float64 seconds
    frames: np.ndarray  # [N, H, W, 3] after ROI crop, enhancement and rotation: what the landmarks refer to
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
        seen = self._pose.result()
        frames, arrays = seen.upright, dict(seen.arrays)
        for name in LANDMARK_STREAMS[1:]:
            future = self._others.get(name)
            arrays.update(future.result() if future else empty_arrays(name, len(frames)))
        features = self._stcnn.result() if self._stcnn else np.zeros((self._n_snippets, 0), np.float32)
        return Window(self.times, frames, arrays, features)

    def cancel(self) -> list[Future]:
        """Cancel the stages not yet started; return those that are still running."""
        futures = [self._pose, *self._others.values(), *([self._stcnn] if self._stcnn else [])]
        return [f for f in futures if not f.cancel()]


@dataclass(frozen=True)
class _PoseResult:
    """What the pose stage hands on: the frames each later stage sees, and the pose in frame coordinates."""

    upright: np.ndarray  # [N, H, W, 3] the (enhanced) frame turned upright: what the landmarks refer to
    patient: np.ndarray  # [N, h, w, 3] the patient's region of it, where the landmarkers look
    region: Box
    rotation: int
    arrays: Arrays


class VideoPipeline:
    """Fresh landmarkers, patient search and rotation state for one video; its windows go in, in order."""

    # windows between searches while the patient has not been found (the first ones are searched one after another)
    SEARCH_RETRY_WINDOWS = 4
    EAGER_SEARCHES = 3
    # a window whose pose is kept in fewer frames than this is tried at the lenient thresholds (at most LENIENT_TRIALS
    # times a video); they are kept when they find at least LENIENT_GAIN more of the window's frames
    POOR_WINDOW = 0.5
    LENIENT_TRIALS = 3
    LENIENT_GAIN = 0.1

    def __init__(self, deidentifier: Deidentifier, *, roi: Sequence[float] | None = None, rotation: int = 0) -> None:
        self._config = deidentifier.config
        self._executors = deidentifier.executors
        self._encoder = deidentifier.encoder
        self._model_dir = deidentifier.model_dir
        self.roi = tuple(roi) if roi is not None else None
        self.tracker = RotationTracker(None, rotation)
        self._crop = PatientCropper()
        self.frame_size = (0, 0)  # width, height of the latest window after the ROI crop
        self._streams: dict[str, VideoStream] = {}
        self._lenient_probe: PoseProbe | None = None
        self.view = View()
        self._found = False  # whether the current view has found the patient
        self._searches = 0
        self._search_in = 0  # windows until the next search (0: this one)
        self._regions: RegionTracker | None = None
        self._lenient = False
        self._lenient_trials = 0
        try:
            for name in self._config.landmark_streams:
                self._streams[name] = STREAM_CLASSES[name](deidentifier.model_dir)
            self.tracker.probe = PoseProbe(deidentifier.model_dir)
            self._lenient_probe = PoseProbe(deidentifier.model_dir, min_confidence=LENIENT)
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

    def _look_for_patient(self, frames: np.ndarray, stamps: np.ndarray) -> None:
        """Run the patient search on this window if it is due; keep its view if it found the patient."""
        if self._search_in > 0:
            self._search_in -= 1
            return
        view = search(frames, self._lenient_probe, rotation=self.tracker.rotation, enhance=self._config.enhance,
                      find_region=self._config.find_patient)
        self._searches += 1
        if view.found:
            view = self._best_tracked(view, frames, stamps)
        if view.found or not self._found:
            if view.found:
                self.tracker.rotation = view.rotation
            self.view, self._found = view, bool(view.found)
        if view.found:
            self._search_in = -1  # until the patient is lost
        else:
            self._search_in = 0 if self._searches < self.EAGER_SEARCHES else self.SEARCH_RETRY_WINDOWS

    def _best_tracked(self, view: View, frames: np.ndarray, stamps: np.ndarray) -> View:
        """Of the view and its simpler neighbours, the one the pose stream tracks in most of the window's frames."""
        options = view.alternatives()
        if len(options) == 1:
            return view
        rates = []
        for option in options:
            seen = rotate(crop_box(option.enhance(frames), option.region), option.rotation)
            with PoseStream(self._model_dir) as trial:
                rates.append(float(trial.process(seen, stamps)[rec.POSE_MASK].mean()))
        if max(rates) == 0.0:
            return view  # the stream found no one either way: the search's judgement stands
        best = options[int(np.argmax(rates))]  # the first of equals: the simplest
        log.info("pose tracked in %s of the window for %s", [f"{r:.0%}" for r in rates],
                 [(o.enhancement_name, o.region == WHOLE) for o in options])
        return best

    def _detect_pose(self, frames: np.ndarray, stamps: np.ndarray) -> Arrays:
        """The pose stream on upright frames; a poorly tracked window is tried again at the lenient thresholds."""
        arrays = self._streams[STREAM_POSE].process(frames, stamps)
        rate = float(arrays[rec.POSE_MASK].mean()) if len(frames) else 1.0
        if self._lenient or not self._found or rate >= self.POOR_WINDOW or self._lenient_trials >= self.LENIENT_TRIALS:
            return arrays
        self._lenient_trials += 1
        trial = PoseStream(self._model_dir, min_detection_confidence=LENIENT, min_presence_confidence=LENIENT,
                           min_tracking_confidence=LENIENT)
        lenient = trial.process(frames, stamps)
        if float(lenient[rec.POSE_MASK].mean()) < rate + self.LENIENT_GAIN:
            trial.close()
            return arrays
        log.info("pose kept in %.0f%% of a window's frames: lenient detection thresholds from here on", 100 * rate)
        self._streams[STREAM_POSE].close()
        self._streams[STREAM_POSE], self._lenient = trial, True
        return lenient

    def _pose_step(self, frames: np.ndarray, stamps: np.ndarray) -> _PoseResult:
        if self._search_in >= 0:
            self._look_for_patient(frames, stamps)
        view = self.view
        enhanced = view.enhance(frames)
        region = view.region
        patient = crop_box(enhanced, region) if region != WHOLE else enhanced
        rotation = self.tracker.choose(patient)
        upright_patient = rotate(patient, rotation)
        arrays = self._detect_pose(upright_patient, stamps)
        self.tracker.observe(arrays, upright_patient.shape[2], upright_patient.shape[1])
        arrays[rec.ROTATION] = np.full(len(frames), rotation, dtype=np.int16)
        upright = rotate(enhanced, rotation) if region != WHOLE else upright_patient
        arrays = to_frame(arrays, region, rotation)
        self._follow(arrays, rotation, frames.shape[2] / frames.shape[1])
        return _PoseResult(upright, upright_patient, region, rotation, arrays)

    def _follow(self, arrays: Arrays, rotation: int, aspect: float) -> None:
        """Move the region with the patient; search again when the patient has been lost for a while."""
        if not self._found or self._search_in >= 0:
            return
        if self._regions is None:
            self._regions = RegionTracker(aspect)
        found = arrays[rec.POSE][arrays[rec.POSE_MASK]]
        box = landmark_box(unturn(found, rotation)) if len(found) else None
        region, again = self._regions.update(self.view.region, box)
        if region != self.view.region:
            self.view = replace(self.view, region=region)
        if again:
            self._search_in = 0

    @staticmethod
    def _stream_step(stream: VideoStream, pose: Future, stamps: np.ndarray) -> Arrays:
        seen: _PoseResult = pose.result()
        return to_frame(stream.process(seen.patient, stamps), seen.region, seen.rotation)

    def _stcnn_step(self, encoder: SnippetEncoder, pose: Future) -> np.ndarray:
        seen: _PoseResult = pose.result()
        upright, arrays = seen.upright, seen.arrays
        snippet = self._config.snippet_frames
        whole = (len(upright) // snippet) * snippet
        if whole == 0:
            return np.zeros((0, encoder.feature_dim), dtype=np.float32)
        if self._config.stcnn_input == STCNN_INPUT_FRAME:
            return encoder.encode(upright[:whole].reshape(whole // snippet, snippet, *upright.shape[1:]))
        # the patient's square from the whole window's pose (the crop the STCNN sees is of the frames used)
        return encoder.encode_window(self._crop(upright[:whole], arrays), whole // snippet)

    def capture(self) -> dict[str, object]:
        """How the patient was looked for and seen, for the record's provenance."""
        view = self.view
        return {
            "enhancement": view.enhancement.to_json() if view.enhancement else {"name": view.enhancement_name},
            "exposure": view.exposure.to_json() if view.exposure else None,
            "region": [round(v, 4) for v in view.region],
            "region_moves": self._regions.moves if self._regions else 0,
            "thresholds": "lenient" if self._lenient else "default",
            "searches": self._searches,
            "found_in_search": [view.found, view.samples],
        }

    def close(self) -> None:
        """Release every landmarker."""
        for stream in self._streams.values():
            stream.close()
        for pose_probe in (self.tracker.probe, self._lenient_probe):
            if pose_probe is not None:
                pose_probe.close()

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
            capture = video.capture()
        return self._assemble(windows, duration_s, frame_size, source, capture)

    def _assemble(self, windows: list[Window], duration_s: float, frame_size: tuple[int, int],
                  source: str, capture: dict[str, object]) -> DeidentifiedVideo:
        snippet, fps = self.config.snippet_frames, self.config.fps
        if not windows:
            raise VideoError(f"{source} has no frames", "re-export the video")
        if sum(len(w.times) for w in windows) < snippet:
            raise VideoError(
                f"{source} is shorter than one {snippet}-frame snippet at {fps:g} fps",
                "use a recording of at least one second",
            )
        arrays = {key: np.concatenate([w.arrays[key] for w in windows]) for key in windows[0].arrays}
        pose_quality = clean_pose(arrays, *frame_size)
        streams = self.config.landmark_streams
        stream_quality = {s: q for s, q in quality(arrays, pose_quality).items() if s in streams}
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
            capture=capture,
            quality=stream_quality,
        )
