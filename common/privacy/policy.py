"""The site privacy policy: the budget a site sets for itself, parsed once and validated."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from semiofed.common.errors import SiteError
from semiofed.common.files import write_json_atomic

PRIVACY_UNIT = "patient"
NEIGHBOURING_RELATION = "add/remove all seizures of one patient"
EVALUATION_NOISY, EVALUATION_EXACT, EVALUATION_NONE = "noisy", "exact", "none"
EVALUATION_RELEASES = (EVALUATION_NOISY, EVALUATION_EXACT, EVALUATION_NONE)
_RELEASE_ORDER = {EVALUATION_NONE: 0, EVALUATION_NOISY: 1, EVALUATION_EXACT: 2}  # what each lets out, least first


@dataclass(frozen=True)
class PrivacyPolicy:
    """A site's privacy limits; the site's policy always wins over a server's request."""

    # delta well below 1/(number of patients a site will ever hold)
    target_delta: float = 1e-5
    # total epsilon over the life of this site's data, all runs together
    max_epsilon: float = 8.0
    # the least noise the site accepts, whatever a server asks
    min_noise_multiplier: float = 0.8
    # per-patient L2 clipping norm of the summed gradient
    clipping_norm: float = 1.0
    privacy_unit: str = PRIVACY_UNIT
    # Distributed DP (docs/privacy.md): 0, the default, means every update this site releases carries the full
    # noise itself (local DP). K >= 2 lets the site take part in distributed-DP rounds, in which it adds only
    # sigma / sqrt(K - colluders) because SecAgg+ shows the coordinator nothing but the sum of at least K sites'
    # updates; the site refuses any such round that could complete with fewer than K sites.
    distributed_dp_sites: int = 0
    # how many of the other sites in such a round may collude with the coordinator (reveal their own noise)
    # while the sum still carries the full sigma
    distributed_dp_colluders: int = 1
    # What a federated evaluation of the global model on this site's held-out patients may release:
    #   "noisy" (default): per-patient confusion shares and validation losses with Gaussian noise, charged to the
    #           budget and signed in the ledger like a training release (docs/privacy.md, "Evaluation");
    #   "exact": exact metrics, declared public by this policy (not covered by the DP guarantee);
    #   "none":  the site evaluates nothing for the coordinator.
    evaluation_release: str = "noisy"
    evaluation_noise_multiplier: float = 5.0  # sensitivity 1 (one patient): epsilon about 0.74 per evaluation at delta 1e-5
    max_evaluations_per_run: int = 2
    min_evaluation_patients: int = 2  # the least test patients an evaluation may describe
    # SecAgg+ guard: with require_secure_aggregation the site answers a train message only inside SecAgg+ with a
    # reconstruction threshold of at least min_secure_aggregation_threshold (and at least 2); every site, whatever
    # its policy, refuses an unmask stage that names a node both alive and dropped (that would unmask its update)
    require_secure_aggregation: bool = False
    min_secure_aggregation_threshold: int = 2

    def __post_init__(self) -> None:
        if not (0.0 < self.target_delta < 1.0):
            raise SiteError(f"policy target_delta {self.target_delta} is out of range", "use a value in (0, 1), e.g. 1e-5")
        if not (self.max_epsilon > 0.0 and math.isfinite(self.max_epsilon)):
            raise SiteError(f"policy max_epsilon {self.max_epsilon} is not a positive number", "use e.g. 8.0")
        if self.min_noise_multiplier < 0.0:
            raise SiteError(f"policy min_noise_multiplier {self.min_noise_multiplier} is negative", "use e.g. 0.8")
        if self.clipping_norm <= 0.0:
            raise SiteError(f"policy clipping_norm {self.clipping_norm} is not positive", "use e.g. 1.0")
        if self.distributed_dp_sites < 0 or self.distributed_dp_colluders < 0 or (
                self.distributed_dp_sites and self.distributed_dp_sites - self.distributed_dp_colluders < 1) or (
                self.distributed_dp_sites == 1):
            raise SiteError(f"policy distributed_dp_sites {self.distributed_dp_sites} with distributed_dp_colluders "
                            f"{self.distributed_dp_colluders} is not a valid trust assumption",
                            "use 0 (local DP only) or at least 2 sites, more than the colluders tolerated")
        if self.evaluation_release not in EVALUATION_RELEASES:
            raise SiteError(f"policy evaluation_release '{self.evaluation_release}' is not known",
                            f"use one of {', '.join(EVALUATION_RELEASES)}")
        if not (self.evaluation_noise_multiplier > 0.0 and math.isfinite(self.evaluation_noise_multiplier)):
            raise SiteError(f"policy evaluation_noise_multiplier {self.evaluation_noise_multiplier} is not positive", "use e.g. 5.0")
        if self.max_evaluations_per_run < 0 or self.min_evaluation_patients < 1:
            raise SiteError(f"policy max_evaluations_per_run {self.max_evaluations_per_run} / min_evaluation_patients "
                            f"{self.min_evaluation_patients} is out of range", "use e.g. 2 and 2")
        if self.min_secure_aggregation_threshold < 2:
            raise SiteError(f"policy min_secure_aggregation_threshold {self.min_secure_aggregation_threshold} is below 2",
                            "use 2 or more (a threshold of 1 lets the coordinator unmask one site alone)")
        if self.privacy_unit != PRIVACY_UNIT:
            raise SiteError(f"policy privacy_unit '{self.privacy_unit}' is not supported", f"use '{PRIVACY_UNIT}'")

    def to_dict(self) -> dict[str, Any]:
        """The policy as JSON-ready values."""
        return asdict(self)

    @property
    def distributed_share(self) -> int:
        """K - colluders: the honest sites whose noise the sum is sure to carry (0 when distributed DP is off)."""
        return self.distributed_dp_sites - self.distributed_dp_colluders if self.distributed_dp_sites else 0

    def allows_change_to(self, new: "PrivacyPolicy") -> bool:
        """True when `new` spends no more privacy than this policy (budget can only shrink)."""
        return not self.loosened_by(new)

    def loosened_by(self, new: "PrivacyPolicy") -> list[str]:
        """The settings `new` would loosen, each as 'name old -> new' (empty: `new` spends no more privacy)."""
        checks = [
            ("max_epsilon", new.max_epsilon <= self.max_epsilon),
            ("target_delta", new.target_delta <= self.target_delta),
            ("min_noise_multiplier", new.min_noise_multiplier >= self.min_noise_multiplier),
            ("evaluation_release", _RELEASE_ORDER[new.evaluation_release] <= _RELEASE_ORDER[self.evaluation_release]),
            ("evaluation_noise_multiplier", new.evaluation_noise_multiplier >= self.evaluation_noise_multiplier),
            ("max_evaluations_per_run", new.max_evaluations_per_run <= self.max_evaluations_per_run),
            ("min_evaluation_patients", new.min_evaluation_patients >= self.min_evaluation_patients),
            ("require_secure_aggregation", new.require_secure_aggregation or not self.require_secure_aggregation),
            ("min_secure_aggregation_threshold",
             new.min_secure_aggregation_threshold >= self.min_secure_aggregation_threshold),
            # distributed DP puts less noise on each update this site releases: it may be made stricter or turned
            # off, never turned on or loosened
            ("distributed_dp_sites", new.distributed_dp_sites == 0 or (
                self.distributed_dp_sites > 0 and new.distributed_dp_sites >= self.distributed_dp_sites)),
            ("distributed_dp_colluders", new.distributed_dp_sites == 0 or (
                self.distributed_dp_sites > 0 and new.distributed_dp_colluders >= self.distributed_dp_colluders)),
        ]
        return [f"{name} {getattr(self, name)!s} -> {getattr(new, name)!s}" for name, ok in checks if not ok]


def load_policy(path: Path) -> PrivacyPolicy:
    """Read and validate a policy file."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SiteError(f"policy file {path} is missing", "run `semiofed site init` for this site directory") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise SiteError(f"policy file {path} is unreadable ({exc})", "restore it from backup or re-run `semiofed site init`") from exc
    known = set(PrivacyPolicy.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SiteError(f"policy file {path} has unknown fields {unknown}", f"use only {sorted(known)}")
    return PrivacyPolicy(**raw)


def save_policy(path: Path, policy: PrivacyPolicy) -> None:
    """Write a policy file atomically."""
    write_json_atomic(path, policy.to_dict())
