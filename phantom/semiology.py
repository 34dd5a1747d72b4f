"""Seizure programs: timed phases (FOS, focal to bilateral TCS) turned into joint-angle trajectories.

A program returns angle offsets [T,J,3] added to the scene's resting posture,
plus small whole-body (root) angles. Angles follow `body.euler_to_matrix`; the
helpers below name anatomical movements so the programs read clinically.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from semiofed.phantom.body import JOINT_INDEX, NUM_JOINTS

FOS = "FOS"
TCS = "TCS"
LABELS = (FOS, TCS)
# Semiologies no model is trained on, for the unusual-seizure check (issue 17): a frontal hyperkinetic (hypermotor)
# seizure and a psychogenic non-epileptic event. Each is one phase of its own name over the whole event.
HYPERMOTOR = "hypermotor"
PNES = "pnes"
UNUSUAL_LABELS = (HYPERMOTOR, PNES)
FOCAL_SIGNS = ("arrest", "head_version", "clonic_arm", "clonic_face", "manual_automatism",
               "oral_automatism", "dystonic_hand", "pedal_automatism", "hemiclonic")
MIN_SEIZURE_S = 10.0  # a TCS needs room for focal onset, tonic and clonic phases
DEFAULT_LEAD_S = (3.0, 12.0)  # video before the onset, seconds (uniform range)
DEFAULT_TAIL_S = (3.0, 15.0)  # video after the offset (postictal), seconds
SIDE_SIGN = {"left": 1.0, "right": -1.0}
LIMB_SIGNS = ("clonic_arm", "hemiclonic", "dystonic_hand")  # the signs that lateralise to a limb


@dataclass(frozen=True)
class PatientTraits:
    """What stays the same across one patient's seizures: side, vigour, tempo, habits."""

    side: str  # body side showing the focal motor signs ("left"/"right")
    amplitude: float  # movement amplitude factor
    tempo: float  # frequency factor for clonic jerks and automatisms
    sign_weights: tuple[float, ...]  # preference over FOCAL_SIGNS
    tcs_probability: float
    fidget: float  # amount of ordinary, non-ictal movement
    leg_involvement: float  # how much the legs take part in generalised jerks

    def to_json(self) -> dict:
        """Return a JSON-serialisable dict."""
        return asdict(self)


@dataclass(frozen=True)
class Phase:
    """One timed phase of a seizure (seconds from video start)."""

    name: str
    start_s: float
    end_s: float
    side: str | None = None


@dataclass(frozen=True)
class SeizurePlan:
    """The timing of one video: label, clinical times and phases."""

    label: str
    video_s: float
    onset_s: float
    offset_s: float
    generalization_s: float | None
    phases: tuple[Phase, ...] = field(default_factory=tuple)

    @property
    def limb_side(self) -> str | None:
        """The side of the lateralised limb signs (clonic arm, hemiclonic, dystonic hand) when they are all on one
        side, as a clinical report would give it; None otherwise."""
        sides = {p.side for p in self.phases if p.name in LIMB_SIGNS and p.side}
        return sides.pop() if len(sides) == 1 else None

    def to_json(self) -> dict:
        """Return a JSON-serialisable dict."""
        return {"label": self.label, "video_s": self.video_s, "onset_s": self.onset_s, "offset_s": self.offset_s,
                "generalization_s": self.generalization_s, "phases": [asdict(p) for p in self.phases]}


def sample_traits(rng: np.random.Generator, tcs_fraction: float) -> PatientTraits:
    """Draw a patient's seizure habits; `tcs_fraction` is the site's share of TCS patients' seizures."""
    weights = rng.dirichlet(np.full(len(FOCAL_SIGNS), 0.8))
    tcs_probability = float(np.clip(rng.beta(2, 2) * 2 * tcs_fraction, 0.0, 1.0))
    return PatientTraits(
        side=("left", "right")[int(rng.integers(2))],
        amplitude=float(rng.uniform(0.45, 1.3)),
        tempo=float(rng.uniform(0.8, 1.2)),
        sign_weights=tuple(float(w) for w in weights),
        tcs_probability=tcs_probability,
        fidget=float(rng.uniform(0.3, 1.2)),
        leg_involvement=float(rng.uniform(0.15, 1.0)),
    )


def plan_seizure(traits: PatientTraits, label: str, duration_range_s: tuple[float, float],
                 rng: np.random.Generator, *, lead_s: tuple[float, float] = DEFAULT_LEAD_S,
                 tail_s: tuple[float, float] = DEFAULT_TAIL_S) -> SeizurePlan:
    """Lay out the phases of one seizure; both labels draw durations from the same distribution.

    The video starts `lead_s` (uniform range) before the onset and ends
    `tail_s` after the offset (the postictal phase).
    """
    lo, hi = duration_range_s
    duration = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    onset = round(float(rng.uniform(*lead_s)), 2)
    offset = round(onset + duration, 2)
    video_s = round(offset + float(rng.uniform(*tail_s)), 2)
    other = "right" if traits.side == "left" else "left"
    phases: list[Phase] = []
    p = np.asarray(traits.sign_weights)
    if label == FOS:
        count = int(rng.integers(1, 4))
        signs = rng.choice(len(FOCAL_SIGNS), size=count, replace=False, p=p / p.sum())
        starts = np.sort(np.concatenate([[0.0], rng.uniform(0.0, 0.5, count - 1)])) * duration
        for k, (sign, start) in enumerate(zip(signs, starts)):
            end = duration if k == count - 1 or rng.random() < 0.5 else min(duration, start + max(3.0, duration * rng.uniform(0.3, 0.9)))
            name = FOCAL_SIGNS[sign]
            side = other if name == "dystonic_hand" and rng.random() < 0.3 else traits.side
            phases.append(Phase(name, round(onset + start, 3), round(onset + end, 3), side))
        return SeizurePlan(FOS, video_s, onset, offset, None, tuple(phases))
    if label in UNUSUAL_LABELS:
        return SeizurePlan(label, video_s, onset, offset, None, (Phase(label, onset, offset, None),))
    if label != TCS:
        raise ValueError(f"unknown label {label!r}; use one of {LABELS + UNUSUAL_LABELS}")
    focal = max(2.0, duration * float(rng.uniform(0.1, 0.5)))
    rest = duration - focal
    tonic = float(np.clip(rest * rng.uniform(0.15, 0.3), 3.0, 20.0))
    general = round(onset + focal, 2)
    count = int(rng.integers(1, 3))
    signs = rng.choice(len(FOCAL_SIGNS), size=count, replace=False, p=p / p.sum())
    for sign in signs:
        phases.append(Phase(FOCAL_SIGNS[sign], onset, general, traits.side))
    if rng.random() < 0.6 and "head_version" not in [ph.name for ph in phases]:
        phases.append(Phase("head_version", round(general - min(focal, 3.0), 3), general + 1.0, traits.side))
    phases.append(Phase("tonic", general, round(general + tonic, 3), None))
    phases.append(Phase("clonic", round(general + tonic, 3), offset, None))
    phases.append(Phase("postictal", offset, video_s, None))
    return SeizurePlan(TCS, video_s, onset, offset, general, tuple(phases))


# --- time helpers -----------------------------------------------------------------------------

def window(t: np.ndarray, start: float, end: float, ramp: float = 0.8) -> np.ndarray:
    """A smooth 0-1-0 envelope over [start, end] with cosine ramps."""
    up = np.clip((t - start) / ramp, 0, 1)
    down = np.clip((end - t) / ramp, 0, 1)
    return (0.5 - 0.5 * np.cos(np.pi * up)) * (0.5 - 0.5 * np.cos(np.pi * down))


def smooth_noise(rng: np.random.Generator, steps: int, fps: float, cutoff_hz: float) -> np.ndarray:
    """Band-limited noise with unit standard deviation (white noise through a Gaussian kernel)."""
    sigma = max(fps / (2 * np.pi * cutoff_hz), 0.5)
    radius = int(3 * sigma) + 1
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    noise = np.convolve(rng.standard_normal(steps + 2 * radius), kernel / kernel.sum(), mode="valid")[:steps]
    return noise / (noise.std() + 1e-9)


def jerk_train(t: np.ndarray, times: np.ndarray, rise_s: float = 0.05, decay_s: float = 0.15) -> np.ndarray:
    """Sum of myoclonic pulses: a fast rise then an exponential relaxation after each time."""
    out = np.zeros_like(t)
    for tj in times:
        dt = t - tj
        near = (dt > 0) & (dt < rise_s + 6 * decay_s)
        d = dt[near]
        out[near] += np.where(d < rise_s, d / rise_s, np.exp(-(d - rise_s) / decay_s))
    return np.minimum(out, 1.5)


def clonic_times(rng: np.random.Generator, start: float, end: float, f0: float, f1: float, jitter: float) -> np.ndarray:
    """Jerk times whose rate falls from f0 to f1 Hz with growing, jittered intervals."""
    times, t = [], start
    span = max(end - start, 1e-3)
    while t < end:
        times.append(t)
        frac = (t - start) / span
        rate = f0 * (f1 / f0) ** frac
        t += (1.0 / rate) * (1.0 + jitter * (0.3 + frac) * rng.standard_normal() * 0.5)
        t = max(t, times[-1] + 0.12)
    return np.asarray(times)


# --- anatomical movement helpers (add to angles[T,J,3]) ---------------------------------------

class Motion:
    """Angle offsets for a sequence, written in anatomical terms."""

    def __init__(self, steps: int) -> None:
        self.angles = np.zeros((steps, NUM_JOINTS, 3))
        self.root = np.zeros((steps, 3))

    def _add(self, joint: str, axis: int, value: np.ndarray | float) -> None:
        self.angles[:, JOINT_INDEX[joint], axis] += value

    def shoulder(self, side: str, flex=0.0, abd=0.0, rot=0.0) -> None:
        s = SIDE_SIGN[side]
        self._add(f"{side}_shoulder", 0, -flex)
        self._add(f"{side}_shoulder", 2, s * abd)
        self._add(f"{side}_shoulder", 1, s * rot)

    def elbow(self, side: str, flex=0.0, pronate=0.0) -> None:
        self._add(f"{side}_elbow", 0, -flex)
        self._add(f"{side}_elbow", 1, SIDE_SIGN[side] * pronate)

    def wrist(self, side: str, flex=0.0, deviate=0.0) -> None:
        s = SIDE_SIGN[side]
        self._add(f"{side}_wrist", 2, -s * flex)
        self._add(f"{side}_wrist", 0, deviate)

    def fingers(self, side: str, curl=0.0) -> None:
        s = SIDE_SIGN[side]
        for finger in ("index", "middle", "ring", "pinky"):
            base = f"{side}_{finger}" if finger in ("index", "pinky") else f"{side}_hand_{finger}_mcp"
            for joint in (base, f"{side}_hand_{finger}_pip", f"{side}_hand_{finger}_dip"):
                self._add(joint, 2, -s * curl)
        self._add(f"{side}_hand_thumb_mcp", 2, -s * 0.5 * curl)

    def hip(self, side: str, flex=0.0, abd=0.0) -> None:
        self._add(f"{side}_hip", 0, -flex)
        self._add(f"{side}_hip", 2, SIDE_SIGN[side] * abd)

    def knee(self, side: str, flex=0.0) -> None:
        self._add(f"{side}_knee", 0, flex)

    def ankle(self, side: str, plantar=0.0) -> None:
        self._add(f"{side}_ankle", 0, plantar)

    def head(self, turn_left=0.0, flex=0.0, tilt_left=0.0) -> None:
        self._add("neck", 1, 0.4 * turn_left)
        self._add("head", 1, 0.6 * turn_left)
        self._add("neck", 0, flex)
        self._add("head", 2, -tilt_left)

    def trunk(self, flex=0.0, turn_left=0.0) -> None:
        self._add("spine", 0, 0.5 * flex)
        self._add("chest", 0, 0.5 * flex)
        self._add("chest", 1, turn_left)

    def jaw(self, opening=0.0) -> None:
        self._add("jaw", 0, opening)

    def breathe(self, depth: np.ndarray | float) -> None:
        self._add("chest", 0, -0.5 * depth)
        for side in ("left", "right"):
            self._add(f"{side}_shoulder", 2, SIDE_SIGN[side] * -0.3 * depth)


# --- programs ---------------------------------------------------------------------------------

def _baseline(m: Motion, t: np.ndarray, fps: float, traits: PatientTraits, rng: np.random.Generator,
              quiet: np.ndarray, restless: np.ndarray | float = 0.0) -> None:
    """Ordinary behaviour: breathing, small postural shifts, and an occasional hand-to-face."""
    steps = len(t)
    rate = rng.uniform(0.2, 0.3)
    m.breathe(0.03 * np.sin(2 * np.pi * rate * t + rng.uniform(0, 6.3)))
    amp = 0.08 * traits.fidget * (1 + restless) * (1 - quiet)
    m.head(turn_left=2.5 * amp * smooth_noise(rng, steps, fps, 0.15), flex=amp * smooth_noise(rng, steps, fps, 0.2))
    for side in ("left", "right"):
        m.shoulder(side, flex=amp * smooth_noise(rng, steps, fps, 0.2), abd=0.5 * amp * smooth_noise(rng, steps, fps, 0.2))
        m.elbow(side, flex=1.5 * amp * smooth_noise(rng, steps, fps, 0.25))
        m.hip(side, flex=0.5 * amp * smooth_noise(rng, steps, fps, 0.1))
        m.fingers(side, curl=0.3 + 2 * amp * smooth_noise(rng, steps, fps, 0.3))
    # Scratching the face or adjusting: looks like an automatism but is not ictal.
    for _ in range(int(rng.poisson(traits.fidget * t[-1] / 40.0))):
        start = rng.uniform(0, max(t[-1] - 4, 0.1))
        env = window(t, start, start + rng.uniform(2.0, 4.0), 0.7) * (1 - quiet)
        side = ("left", "right")[int(rng.integers(2))]
        m.shoulder(side, flex=1.0 * env, abd=0.2 * env)
        m.elbow(side, flex=1.9 * env + 0.15 * env * np.sin(2 * np.pi * 2.5 * t))


def _focal_sign(m: Motion, name: str, side: str, t: np.ndarray, start: float, end: float, fps: float,
                traits: PatientTraits, rng: np.random.Generator) -> None:
    steps = len(t)
    a = traits.amplitude * rng.uniform(0.8, 1.2)
    f = traits.tempo
    env = window(t, start, end, 0.8)
    s = SIDE_SIGN[side]
    if name == "arrest":
        m.head(flex=0.1 * env)
    elif name == "head_version":
        turn = window(t, start, end, min(3.0, (end - start) / 2)) * rng.uniform(0.7, 1.2)
        jerks = jerk_train(t, clonic_times(rng, start, end, 1.5 * f, 1.0 * f, 0.3)) * env
        m.head(turn_left=s * (turn + 0.15 * jerks), tilt_left=s * 0.2 * turn, flex=-0.15 * turn)
        m.trunk(turn_left=s * 0.15 * turn)
    elif name == "clonic_arm":
        jerks = jerk_train(t, clonic_times(rng, start, end, 3.0 * f, 2.0 * f, 0.2)) * env
        m.shoulder(side, flex=0.4 * a * env + 0.3 * a * jerks, abd=0.3 * a * env + 0.25 * a * jerks)
        m.elbow(side, flex=0.8 * a * env + 0.6 * a * jerks)
        m.wrist(side, flex=0.4 * jerks)
        m.fingers(side, curl=0.9 * env)
    elif name == "clonic_face":
        jerks = jerk_train(t, clonic_times(rng, start, end, 3.0 * f, 2.0 * f, 0.2), 0.04, 0.1) * env
        m.head(turn_left=s * (0.25 * a * jerks + 0.3 * env), tilt_left=s * 0.25 * a * jerks)
        m.jaw(opening=0.15 * a * jerks)
        m.shoulder(side, abd=-0.05 * jerks)
    elif name == "manual_automatism":
        both = rng.random() < 0.5
        for hand in (("left", "right") if both else (side,)):
            wander = smooth_noise(rng, steps, fps, 1.2 * f)
            m.shoulder(hand, flex=(0.7 + 0.25 * wander) * a * env, abd=0.15 * smooth_noise(rng, steps, fps, 1.0) * env)
            m.elbow(hand, flex=(1.5 + 0.35 * smooth_noise(rng, steps, fps, 1.5 * f)) * env)
            m.wrist(hand, flex=0.4 * smooth_noise(rng, steps, fps, 2.0 * f) * env)
            m.fingers(hand, curl=(0.6 + 0.5 * np.sin(2 * np.pi * 2.0 * f * t + rng.uniform(0, 6.3))) * env)
    elif name == "oral_automatism":
        chew = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1.0, 2.0) * f * t)
        m.jaw(opening=0.25 * a * chew * env)
        m.head(flex=0.04 * chew * env)
    elif name == "pedal_automatism":
        # Bipedal cycling/kicking (frontal lobe seizures): large, bilateral, alternating.
        rate = rng.uniform(0.7, 1.6) * f
        phase = rng.uniform(0, 6.3)
        for leg, lag in (("left", 0.0), ("right", np.pi)):
            cyc = 0.5 + 0.5 * np.sin(2 * np.pi * rate * t + phase + lag)
            m.hip(leg, flex=0.6 * a * cyc * env)
            m.knee(leg, flex=0.9 * a * cyc * env)
        m.trunk(flex=0.08 * a * smooth_noise(rng, steps, fps, 1.0) * env)
    elif name == "hemiclonic":
        # Clonic jerks marching from arm to the leg of the same side.
        jerks = jerk_train(t, clonic_times(rng, start, end, 2.8 * f, 1.6 * f, 0.3)) * env
        m.shoulder(side, flex=0.3 * a * jerks + 0.2 * env, abd=0.2 * a * jerks)
        m.elbow(side, flex=0.5 * a * jerks + 0.6 * env)
        m.hip(side, flex=0.3 * a * jerks * window(t, start + 0.3 * (end - start), end, 1.0))
        m.knee(side, flex=0.45 * a * jerks * window(t, start + 0.3 * (end - start), end, 1.0))
        m.head(turn_left=s * (0.35 * env + 0.1 * jerks))
    elif name == "dystonic_hand":
        hold = window(t, start, end, 1.5)
        m.shoulder(side, flex=0.5 * hold, abd=0.35 * hold)
        m.elbow(side, flex=1.3 * hold, pronate=0.8 * hold)
        m.wrist(side, flex=1.0 * hold + 0.05 * smooth_noise(rng, steps, fps, 3.0) * hold)
        m.fingers(side, curl=1.3 * hold)
    else:
        raise ValueError(f"unknown focal sign {name!r}; use one of {FOCAL_SIGNS}")


def _generalised(m: Motion, t: np.ndarray, tonic: Phase, clonic: Phase, fps: float, traits: PatientTraits,
                 rng: np.random.Generator) -> None:
    """Bilateral tonic stiffening, then clonic jerks slowing from ~4 Hz to ~1 Hz."""
    steps = len(t)
    a = traits.amplitude * rng.uniform(0.85, 1.15)
    stiff = window(t, tonic.start_s, clonic.start_s + 0.5, 1.0)
    # Tonic posture: arms abducted and flexed, legs extended, trunk and neck arched.
    tremor = np.sin(2 * np.pi * rng.uniform(6, 9) * t) * window(t, tonic.start_s + 0.5 * (clonic.start_s - tonic.start_s),
                                                                 clonic.start_s + 0.5, 0.5)
    for side in ("left", "right"):
        lag = rng.uniform(0.95, 1.05)
        m.shoulder(side, flex=0.6 * a * lag * stiff, abd=0.7 * a * lag * stiff + 0.04 * tremor)
        m.elbow(side, flex=0.9 * a * stiff + 0.05 * tremor)
        m.wrist(side, flex=0.5 * stiff)
        m.fingers(side, curl=1.1 * stiff)
        m.hip(side, flex=0.15 * stiff, abd=-0.05 * stiff)
        m.knee(side, flex=-0.05 * stiff + 0.03 * tremor)
        m.ankle(side, plantar=0.5 * stiff)
    m.trunk(flex=-0.2 * a * stiff)
    m.head(flex=-0.35 * stiff, turn_left=SIDE_SIGN[traits.side] * 0.3 * stiff)
    m.jaw(opening=0.12 * stiff)
    # Clonic: bilateral, near-synchronous flexion jerks with growing intervals and fading amplitude.
    times = clonic_times(rng, clonic.start_s, clonic.end_s, rng.uniform(3.5, 4.5) * traits.tempo,
                         rng.uniform(0.8, 1.3), 0.4)
    fade = np.clip(1.0 - 0.5 * (t - clonic.start_s) / max(clonic.end_s - clonic.start_s, 1e-3), 0.4, 1.0)
    body = window(t, clonic.start_s, clonic.end_s, 0.3)
    base = 0.5 * body * np.clip(1 - (t - clonic.start_s) / 4.0, 0, 1)  # stiffness dissolving into jerks
    for side in ("left", "right"):
        lag = rng.uniform(0.0, 0.03)
        gain = a * rng.uniform(0.8, 1.2) * (rng.uniform(0.3, 0.8) if side != traits.side and rng.random() < 0.3 else 1.0)
        jerks = jerk_train(t, times + lag, 0.04, 0.12 * rng.uniform(0.8, 1.2)) * fade * body
        m.shoulder(side, flex=base * 0.6 + 0.35 * gain * jerks, abd=base * 0.6 + 0.3 * gain * jerks)
        m.elbow(side, flex=base + 0.7 * gain * jerks)
        m.fingers(side, curl=0.9 * body)
        m.hip(side, flex=0.25 * gain * traits.leg_involvement * jerks)
        m.knee(side, flex=0.35 * gain * traits.leg_involvement * jerks)
    common = jerk_train(t, times, 0.04, 0.12) * fade * body
    m.trunk(flex=0.12 * a * common)
    m.head(flex=0.25 * a * common - 0.1 * body)
    m.jaw(opening=0.1 * common)
    m.root[:, 0] += 0.03 * common
    m.root[:, 1] += 0.015 * common * smooth_noise(rng, steps, fps, 2.0)


def _hypermotor(m: Motion, t: np.ndarray, start: float, end: float, fps: float, traits: PatientTraits,
                rng: np.random.Generator) -> None:
    """Frontal hyperkinetic seizure: abrupt, violent, proximal and irregular movement of the whole body (thrashing,
    rocking, bicycling), 0.5-2 Hz, no slowing and no tonic or clonic phase; ends abruptly, with little postictal."""
    steps = len(t)
    env = window(t, start, end, 0.3)  # abrupt onset and offset
    a = traits.amplitude * rng.uniform(1.0, 1.4)
    for side in ("left", "right"):
        m.shoulder(side, flex=a * (0.6 + 0.8 * smooth_noise(rng, steps, fps, 1.2)) * env,
                   abd=a * 0.6 * smooth_noise(rng, steps, fps, 1.0) * env)
        m.elbow(side, flex=a * (0.8 + 0.7 * smooth_noise(rng, steps, fps, 1.5)) * env)
        m.hip(side, flex=a * (0.5 + 0.5 * smooth_noise(rng, steps, fps, 1.0)) * env,
              abd=0.2 * a * smooth_noise(rng, steps, fps, 0.8) * env)
        m.knee(side, flex=a * (0.8 + 0.7 * smooth_noise(rng, steps, fps, 1.0)) * env)
    m.trunk(flex=0.25 * a * smooth_noise(rng, steps, fps, 0.8) * env, turn_left=0.35 * a * smooth_noise(rng, steps, fps, 0.7) * env)
    m.head(turn_left=0.5 * a * smooth_noise(rng, steps, fps, 1.0) * env, flex=0.2 * smooth_noise(rng, steps, fps, 1.0) * env)
    m.root[:, 1] += 0.12 * a * smooth_noise(rng, steps, fps, 0.6) * env  # rocking, turning in bed
    m.root[:, 0] += 0.06 * a * smooth_noise(rng, steps, fps, 0.8) * env


def _non_epileptic(m: Motion, t: np.ndarray, start: float, end: float, fps: float, traits: PatientTraits,
                   rng: np.random.Generator) -> None:
    """Psychogenic non-epileptic event: side-to-side ('no-no') head movement, out-of-phase shaking of the limbs at a
    steady 3-5 Hz that never slows, pelvic thrusting, all waxing and waning with pauses; eyes closed."""
    steps = len(t)
    env = window(t, start, end, 1.5)
    wax = np.clip(0.55 + 0.6 * smooth_noise(rng, steps, fps, 0.12), 0.0, 1.0) * env  # waxing and waning, pauses
    f = rng.uniform(3.0, 5.0)
    a = traits.amplitude * rng.uniform(0.8, 1.1)
    for k, side in enumerate(("left", "right")):
        phase = k * np.pi + rng.uniform(-0.3, 0.3)  # the two sides out of phase
        shake = np.sin(2 * np.pi * f * t + phase)
        m.shoulder(side, flex=0.3 * a * env + 0.12 * a * shake * wax)
        m.elbow(side, flex=0.7 * a * env + 0.35 * a * shake * wax)
        m.wrist(side, flex=0.25 * shake * wax)
        legs = np.sin(2 * np.pi * f * t + phase + np.pi / 2)
        m.hip(side, flex=0.12 * a * legs * wax)
        m.knee(side, flex=0.25 * a * legs * wax)
    m.head(turn_left=0.45 * a * np.sin(2 * np.pi * rng.uniform(0.6, 1.2) * t) * wax)
    m.root[:, 0] += 0.04 * a * np.sin(2 * np.pi * rng.uniform(0.8, 1.5) * t) * wax  # pelvic thrusting


def motion_program(plan: SeizurePlan, traits: PatientTraits, fps: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Return (angle offsets [T,J,3], root angle offsets [T,3]) for a planned seizure."""
    steps = int(round(plan.video_s * fps))
    t = np.arange(steps) / fps
    m = Motion(steps)
    # Behavioural arrest and the generalised and postictal phases silence ordinary movement; other
    # focal signs do not (patients keep moving the free limbs, often restlessly).
    quiet = np.zeros(steps)
    for phase in plan.phases:
        if phase.name in ("arrest", "tonic", "clonic"):
            quiet = np.maximum(quiet, window(t, phase.start_s, phase.end_s, 0.5))
    if plan.label == TCS:
        quiet = np.maximum(quiet, np.clip((t - plan.offset_s) / 2.0, 0, 1))
    _baseline(m, t, fps, traits, rng, quiet=quiet,
              restless=window(t, plan.onset_s, plan.offset_s, 0.5) * (plan.label == FOS) * rng.uniform(0.0, 1.5))
    by_name = {p.name: p for p in plan.phases}
    for phase in plan.phases:
        if phase.name in FOCAL_SIGNS:
            _focal_sign(m, phase.name, phase.side or traits.side, t, phase.start_s, phase.end_s, fps, traits, rng)
    if plan.label == HYPERMOTOR:
        _hypermotor(m, t, plan.onset_s, plan.offset_s, fps, traits, rng)
    elif plan.label == PNES:
        _non_epileptic(m, t, plan.onset_s, plan.offset_s, fps, traits, rng)
    if plan.label == TCS:
        _generalised(m, t, by_name["tonic"], by_name["clonic"], fps, traits, rng)
        # Postictal: stillness with slow, deep (stertorous) breathing.
        deep = window(t, plan.offset_s, plan.video_s + 5, 2.0)
        m.breathe(0.08 * deep * np.sin(2 * np.pi * rng.uniform(0.3, 0.45) * t))
        m.head(turn_left=SIDE_SIGN[traits.side] * 0.3 * deep)
    return m.angles, m.root
