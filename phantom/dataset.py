"""Plan and write a multi-site phantom dataset: patients, seizures, videos, ground truth and manifests."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from semiofed.common.errors import SemiofedError
from semiofed.phantom.body import sample_anthropometry
from semiofed.phantom.encode import video_codec, write_mp4
from semiofed.phantom.episode import EpisodeSpec, simulate
from semiofed.phantom.render import Renderer
from semiofed.phantom.scene import SCENES, SiteStyle, roi_fraction, sample_scene
from semiofed.phantom.semiology import (DEFAULT_LEAD_S, DEFAULT_TAIL_S, FOS, MIN_SEIZURE_S, TCS, UNUSUAL_LABELS, plan_seizure,
                                       sample_traits)
from semiofed.phantom.truth import write_truth

log = logging.getLogger(__name__)

MANIFEST_HEADER = ("video", "patient_id", "seizure_id", "label", "onset_s", "offset_s", "generalization_s", "view", "roi",
                   "side")
MANIFEST_NAME = "manifest.csv"
DATASET_FILE = "phantom.json"


class PhantomError(SemiofedError):
    """A phantom generation setting is invalid or the output folder is not usable."""


@dataclass(frozen=True)
class SiteProfile:
    """One hospital's set-up: the non-IID knobs (scenes, footage quality, class balance, patient share)."""

    name: str
    style: SiteStyle
    tcs_fraction: float  # expected share of TCS among its seizures
    patient_share: float  # relative number of patients


# Built-in hospitals; a fourth site and beyond reuse them in turn, jittered.
SITE_PRESETS: tuple[SiteProfile, ...] = (
    SiteProfile("emu_bedside", SiteStyle({"bed_side": 0.55, "bed_sitting": 0.3, "ceiling": 0.15}, ir_fraction=0.15,
                noise_sigma=(0.8, 1.8), crf=(23, 26), camera_distance=1.0, blanket_fraction=0.2, nurse_fraction=0.1,
                light_change_fraction=0.2), tcs_fraction=0.5, patient_share=1.0),
    SiteProfile("ceiling_night", SiteStyle({"ceiling": 0.7, "bed_side": 0.3}, ir_fraction=0.6, noise_sigma=(1.5, 2.5),
                crf=(24, 28), camera_distance=1.1, blanket_fraction=0.4, nurse_fraction=0.05, light_change_fraction=0.3),
                tcs_fraction=0.3, patient_share=0.7),
    SiteProfile("ward_mixed", SiteStyle({"chair": 0.4, "bed_sitting": 0.4, "bed_side": 0.2}, ir_fraction=0.1,
                noise_sigma=(1.0, 2.0), crf=(26, 30), camera_distance=0.9, blanket_fraction=0.1, nurse_fraction=0.25,
                light_change_fraction=0.3), tcs_fraction=0.65, patient_share=1.3),
)


@dataclass(frozen=True)
class GenerateConfig:
    """The settings of `semiofed phantom generate`."""

    sites: int = 3
    patients: int = 20
    seizures_per_patient: tuple[int, int] = (1, 4)
    seed: int = 0
    duration_s: tuple[float, float] = (15.0, 180.0)  # seizure duration, onset to offset
    lead_s: tuple[float, float] = DEFAULT_LEAD_S  # video before the onset
    tail_s: tuple[float, float] = DEFAULT_TAIL_S  # video after the offset (postictal)
    min_patients_per_site: int = 1
    fps: float = 15.0
    size: tuple[int, int] = (320, 240)
    # share of seizures replaced by a semiology no model trains on (hypermotor, non-epileptic): held-out test cohorts
    # for the unusual-seizure score; 0 leaves every other draw of the dataset unchanged
    unusual_fraction: float = 0.0

    def validate(self) -> None:
        """Raise PhantomError naming the first bad setting."""
        if self.sites < 1:
            raise PhantomError(f"--sites {self.sites} is below 1", "ask for at least one site")
        if self.min_patients_per_site < 1:
            raise PhantomError(f"at least {self.min_patients_per_site} patients per site is below 1", "ask for at least one")
        if self.patients < self.sites * self.min_patients_per_site:
            raise PhantomError(f"--patients {self.patients} is fewer than {self.min_patients_per_site} per site for --sites {self.sites}",
                               f"give every site at least {self.min_patients_per_site} patient(s) (a patient belongs to one hospital)")
        lo, hi = self.seizures_per_patient
        if not 1 <= lo <= hi:
            raise PhantomError(f"--seizures-per-patient {lo}-{hi} is not a range of at least 1", "write it as e.g. 1-4")
        dlo, dhi = self.duration_s
        if not MIN_SEIZURE_S <= dlo <= dhi <= 600:
            raise PhantomError(f"--duration-s {dlo:g}-{dhi:g} is outside {MIN_SEIZURE_S:g}-600 s or not increasing",
                               "write it as e.g. 15-180 (seizure duration in seconds)")
        for name, (a, b) in (("lead", self.lead_s), ("tail", self.tail_s)):
            if not 1.0 <= a <= b <= 60:
                raise PhantomError(f"{name} {a:g}-{b:g} s is outside 1-60 s or not increasing", "write it as e.g. 3-12")
        if not 0.0 <= self.unusual_fraction <= 1.0:
            raise PhantomError(f"unusual fraction {self.unusual_fraction:g} is outside 0-1", "give a share such as 0.3")
        if not 5 <= self.fps <= 60:
            raise PhantomError(f"--fps {self.fps:g} is outside 5-60", "use e.g. 15")
        w, h = self.size
        if w < 64 or h < 64 or w % 2 or h % 2:
            raise PhantomError(f"--size {w}x{h} is too small or odd", "use even sizes of at least 64, e.g. 320x240")


def site_profile(index: int, seed: int) -> SiteProfile:
    """The profile of site `index` (0-based): a preset, jittered beyond the first three."""
    base = SITE_PRESETS[index % len(SITE_PRESETS)]
    if index < len(SITE_PRESETS):
        return base
    rng = np.random.default_rng([seed, 77, index])
    style = replace(base.style, camera_distance=float(base.style.camera_distance * rng.uniform(0.9, 1.15)),
                    ir_fraction=float(np.clip(base.style.ir_fraction + rng.uniform(-0.1, 0.2), 0, 1)))
    return replace(base, name=f"{base.name}_{index + 1}", style=style,
                   tcs_fraction=float(np.clip(base.tcs_fraction + rng.uniform(-0.15, 0.15), 0.1, 0.9)))


@dataclass(frozen=True)
class PlannedVideo:
    """One video to render: where it goes and what it shows."""

    site: str
    relpath: str  # relative to the site folder
    spec: EpisodeSpec


def _split_patients(config: GenerateConfig, profiles: list[SiteProfile]) -> list[int]:
    rng = np.random.default_rng([config.seed, 11])
    shares = np.array([p.patient_share for p in profiles]) * rng.uniform(0.8, 1.25, len(profiles))
    counts = np.full(len(profiles), config.min_patients_per_site, dtype=int)
    extra = config.patients - counts.sum()
    counts += np.floor(extra * shares / shares.sum()).astype(int)
    for k in np.argsort(-shares)[: config.patients - counts.sum()]:
        counts[k] += 1
    return counts.tolist()


def episode_seed(seed: int, patient_no: int, seizure_no: int) -> int:
    """A 32-bit seed for one video, independent of how many sites or patients there are."""
    return int(np.random.SeedSequence([seed, patient_no, seizure_no]).generate_state(1)[0])


def plan_dataset(config: GenerateConfig) -> tuple[list[SiteProfile], list[PlannedVideo]]:
    """Decide every site, patient and seizure (cheap: no rendering)."""
    config.validate()
    profiles = [site_profile(i, config.seed) for i in range(config.sites)]
    counts = _split_patients(config, profiles)
    videos: list[PlannedVideo] = []
    patient_no = 0
    for site_index, (profile, count) in enumerate(zip(profiles, counts)):
        site = f"site_{site_index + 1:02d}"
        site_videos: list[PlannedVideo] = []
        kinds = [k for k in SCENES if profile.style.scene_weights.get(k, 0) > 0]
        weights = np.array([profile.style.scene_weights[k] for k in kinds])
        for _ in range(count):
            patient_no += 1
            patient_id = f"P{patient_no:03d}"
            prng = np.random.default_rng([config.seed, 1000 + patient_no, site_index])
            body = sample_anthropometry(prng)
            traits = sample_traits(prng, profile.tcs_fraction)
            home_scene = kinds[int(prng.choice(len(kinds), p=weights / weights.sum()))]
            n_seizures = int(prng.integers(config.seizures_per_patient[0], config.seizures_per_patient[1] + 1))
            for seizure_no in range(1, n_seizures + 1):
                seed = episode_seed(config.seed, patient_no, seizure_no)
                rng = np.random.default_rng([seed, 0])
                label = TCS if rng.random() < traits.tcs_probability else FOS
                if config.unusual_fraction > 0:  # its own stream, so the other draws stay as without it
                    urng = np.random.default_rng([seed, 5])
                    if urng.random() < config.unusual_fraction:
                        label = UNUSUAL_LABELS[int(urng.integers(len(UNUSUAL_LABELS)))]
                plan = plan_seizure(traits, label, config.duration_s, rng, lead_s=config.lead_s, tail_s=config.tail_s)
                kind = home_scene if rng.random() < 0.7 else kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
                scene = sample_scene(kind, profile.style, config.size, plan.video_s, rng)
                seizure_id = f"{patient_id}-S{seizure_no}"
                spec = EpisodeSpec(patient_id, seizure_id, body, traits, plan, scene, config.fps, seed)
                site_videos.append(PlannedVideo(site, f"videos/{patient_id}_S{seizure_no}.mp4", spec))
        videos += _ensure_both_labels(site_videos, config)
    return profiles, videos


def _ensure_both_labels(site_videos: list[PlannedVideo], config: GenerateConfig) -> list[PlannedVideo]:
    """Give a site with two or more seizures at least one of each label (trainers need both classes)."""
    labels = {v.spec.plan.label for v in site_videos} & {FOS, TCS}
    if len(site_videos) < 2 or len(labels) == 2:
        return site_videos
    missing = TCS if FOS in labels else FOS
    last = site_videos[-1]
    rng = np.random.default_rng([last.spec.seed, 9, config.seed])
    lo = last.spec.plan.offset_s - last.spec.plan.onset_s
    plan = plan_seizure(last.spec.traits, missing, (max(lo, MIN_SEIZURE_S), max(lo, MIN_SEIZURE_S) + 1e-6), rng,
                        lead_s=config.lead_s, tail_s=config.tail_s)
    scene = replace(last.spec.scene, nurse_s=None if last.spec.scene.nurse_s is None else min(last.spec.scene.nurse_s, plan.video_s - 3),
                    light_change_s=None if last.spec.scene.light_change_s is None else min(last.spec.scene.light_change_s, plan.video_s - 2))
    fixed = replace(last, spec=replace(last.spec, plan=plan, scene=scene))
    return site_videos[:-1] + [fixed]


def manifest_row(video: PlannedVideo) -> dict[str, str]:
    """The manifest row of a planned video, in `site prepare`'s format."""
    plan = video.spec.plan
    roi = roi_fraction(video.spec.scene)
    return {
        "video": video.relpath,
        "patient_id": video.spec.patient_id,
        "seizure_id": video.spec.seizure_id,
        "label": plan.label,
        "onset_s": f"{plan.onset_s:.2f}",
        "offset_s": f"{plan.offset_s:.2f}",
        "generalization_s": "" if plan.generalization_s is None else f"{plan.generalization_s:.2f}",
        "view": video.spec.scene.kind,
        "roi": "" if roi is None else ";".join(f"{v:.3f}" for v in roi),
        "side": plan.limb_side or "",
    }


def render_video(video: PlannedVideo, out: Path) -> dict[str, str]:
    """Simulate, render and encode one video with its ground truth; return its manifest row."""
    site_dir = out / video.site
    episode = simulate(video.spec)
    path = site_dir / video.relpath
    frames = write_mp4(path, Renderer(episode).frames(), video.spec.fps, video.spec.size, video.spec.scene.crf)
    if frames != video.spec.num_frames:
        raise PhantomError(f"wrote {frames} frames to {path}, expected {video.spec.num_frames}", "report this as a bug")
    write_truth(episode, site_dir / "truth" / (Path(video.relpath).stem + ".json"), video.relpath)
    log.info("wrote %s (%s, %d frames)", path, video.spec.plan.label, frames)
    return manifest_row(video)


def render_videos(videos: list[PlannedVideo], out: Path, *, workers: int = 1,
                  on_rendered: Callable[[], None] | None = None) -> None:
    """Render every planned video, in `workers` processes (the output does not depend on it)."""
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            for _ in pool.map(render_video, videos, [out] * len(videos)):
                if on_rendered:
                    on_rendered()
        return
    for video in videos:
        render_video(video, out)
        if on_rendered:
            on_rendered()


def write_manifests(out: Path, videos: list[PlannedVideo]) -> list[Path]:
    """Write one manifest.csv per site (rows in plan order)."""
    paths = []
    for site in sorted({v.site for v in videos}):
        path = out / site / MANIFEST_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as stream:
            writer = csv.DictWriter(stream, fieldnames=MANIFEST_HEADER, lineterminator="\n")
            writer.writeheader()
            writer.writerows(manifest_row(v) for v in videos if v.site == site)
        paths.append(path)
    return paths


def write_dataset_summary(out: Path, config: GenerateConfig, profiles: list[SiteProfile], videos: list[PlannedVideo]) -> Path:
    """Write phantom.json: the settings, site profiles and per-site counts (no timestamps, so it is reproducible)."""
    sites = []
    for index, profile in enumerate(profiles):
        name = f"site_{index + 1:02d}"
        mine = [v for v in videos if v.site == name]
        sites.append({
            "site": name,
            "profile": asdict(profile),
            "patients": sorted({v.spec.patient_id for v in mine}),
            "videos": len(mine),
            "labels": {label: sum(v.spec.plan.label == label for v in mine) for label in (FOS, TCS) + UNUSUAL_LABELS
                       if label in (FOS, TCS) or any(v.spec.plan.label == label for v in mine)},
            "views": {kind: sum(v.spec.scene.kind == kind for v in mine) for kind in SCENES},
        })
    summary = {"generator": "semiofed.phantom", "config": asdict(config), "codec": video_codec(), "sites": sites}
    path = out / DATASET_FILE
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return path


def check_output_dir(out: Path, force: bool) -> None:
    """Refuse to mix a new dataset into an old one unless forced."""
    if (out / DATASET_FILE).exists() and not force:
        raise PhantomError(f"{out} already holds a phantom dataset", "choose another --out or pass --force to overwrite it")
    if out.exists() and not out.is_dir():
        raise PhantomError(f"{out} exists and is not a folder", "choose another --out")
