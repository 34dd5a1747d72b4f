"""Egress policy: a ClientApp mod that lets out only the model arrays and whitelisted metrics.

It sits inside `secaggplus_mod`, so it sees every reply in plain form before
masking. A reply may carry: the model's arrays with the run's exact names
(order), shapes and dtype, finite; the scalar metrics of common/federation/run_config.py
within bounds; the site's own id, version and signed ledger head; a short
decline reason. Anything else (strings, unexpected arrays, extra records,
oversized or non-finite values) blocks the whole reply: the violation is
logged at the site (names only, never values) and the round fails loudly for
this site with a generic error that itself carries nothing from the reply.
A failure of the site's own code leaves as one fixed text for the same reason.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from semiofed.common.federation.run_config import (
    BUDGET_METRICS,
    EVAL_METRICS,
    FIT_METRICS,
    KEY_ACCEPTS,
    KEY_DECLINE_REASON,
    KEY_FEATURE_SHA,
    KEY_LEDGER_HEAD,
    KEY_SITE_ID,
    KEY_VERSION,
    MAX_TEXT_BYTES,
)

log = logging.getLogger(__name__)

EGRESS_LOG = "egress.jsonl"
MAX_METRIC = 1e7  # no whitelisted metric is larger (epsilon, seconds, counts of patients)
MSG_TRAIN, MSG_EVALUATE, MSG_PROPERTIES = "train", "evaluate", "get_properties"


class EgressBlocked(RuntimeError):
    """A reply broke the egress policy; it was not sent."""


@dataclass(frozen=True)
class EgressSpec:
    """What this site may send in this run."""

    site_id: str
    version: str
    array_shapes: tuple[tuple[int, ...], ...]
    verify_head: Callable[[dict[str, Any]], bool]
    log_path: Path | None = None
    extra_metrics: frozenset[str] = field(default_factory=frozenset)


def _scalar_problems(name: str, value: Any) -> list[str]:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return [f"metric {name} is not a number"]
    if not math.isfinite(float(value)) or abs(float(value)) > MAX_METRIC:
        return [f"metric {name} is not finite or out of range"]
    return []


def _text_problems(name: str, value: Any, spec: EgressSpec) -> list[str]:
    if not isinstance(value, str) or len(value.encode("utf-8")) > MAX_TEXT_BYTES:
        return [f"text {name} is not a short string"]
    if name == KEY_SITE_ID and value != spec.site_id:
        return [f"text {name} is not this site's id"]
    if name == KEY_VERSION and value != spec.version:
        return [f"text {name} is not this site's semiofed version"]
    if name == KEY_FEATURE_SHA and not (len(value) == 64 and all(c in "0123456789abcdef" for c in value)):
        return [f"text {name} is not a sha256"]
    if name == KEY_LEDGER_HEAD:
        try:
            head = json.loads(value)
        except ValueError:
            return [f"text {name} is not JSON"]
        if not (isinstance(head, dict) and head.get("site_id") == spec.site_id and spec.verify_head(head)):
            return [f"text {name} is not this site's signed ledger head"]
    return []


def _metric_problems(metrics: dict[str, Any], allowed: Sequence[str], spec: EgressSpec) -> list[str]:
    problems: list[str] = []
    texts = {KEY_SITE_ID, KEY_VERSION, KEY_LEDGER_HEAD, KEY_DECLINE_REASON, KEY_FEATURE_SHA}
    for name, value in metrics.items():
        if name in texts:
            problems += _text_problems(name, value, spec)
        elif name in allowed or name in spec.extra_metrics:
            problems += _scalar_problems(name, value)
        else:
            problems.append(f"metric {name!r:.40} is not on the whitelist")
    return problems


def _array_problems(arrays: Sequence[np.ndarray], spec: EgressSpec) -> list[str]:
    if len(arrays) != len(spec.array_shapes):
        return [f"{len(arrays)} arrays instead of the model's {len(spec.array_shapes)}"]
    problems = []
    for i, (array, shape) in enumerate(zip(arrays, spec.array_shapes)):
        if array.dtype != np.float32 or tuple(array.shape) != tuple(shape):
            problems.append(f"array {i} is {array.dtype}{tuple(array.shape)}, expected float32{tuple(shape)}")
        elif not np.isfinite(array).all():
            problems.append(f"array {i} has non-finite values")
    return problems


def _records(content: Any) -> dict[str, set[str]]:
    return {"array": set(content.array_records), "metric": set(content.metric_records), "config": set(content.config_records)}


# Flower's decoder reads only these keys of the fixed records; anything else in them would leave unchecked.
_FIXED_KEYS = {"status": {"code", "message"}, "num_examples": {"num_examples"}, "loss": {"loss"}}
_EMPTY_TENSOR_KEY = "_empty"  # flwr.compat's marker for a reply without arrays; its decoder skips the entry


def _layout_problems(content: Any) -> list[str]:
    """What the legacy decoder would skip: extra keys in fixed records, unread array entries and Array metadata."""
    problems = []
    for kind in ("metric", "config"):
        for name, record in getattr(content, f"{kind}_records").items():
            fixed = _FIXED_KEYS.get(name.rpartition(".")[2])
            if fixed is not None and set(record) != fixed:
                problems.append(f"{kind} record {name} has keys other than {', '.join(sorted(fixed))}")
    for name, record in content.array_records.items():
        keys = list(record.keys())
        if keys not in ([str(i) for i in range(len(keys))], [_EMPTY_TENSOR_KEY]):
            problems.append(f"array record {name} has entries other than the legacy encoder's")
        for key in keys:
            array = record[key]
            if array.dtype != "" or tuple(array.shape) != () or array.stype not in ("numpy.ndarray", "") or (
                    key == _EMPTY_TENSOR_KEY and array.data):
                problems.append(f"array record {name} carries data outside its arrays")
                break
    return problems


def check_reply(message_type: str, content: Any, spec: EgressSpec) -> list[str]:
    """Every way `content` (a Flower RecordDict, legacy encoding) breaks the policy; empty when it may leave."""
    records = _records(content)
    if message_type == MSG_TRAIN:
        expected = {"array": {"fitres.parameters"}, "metric": {"fitres.num_examples"}, "config": {"fitres.metrics", "fitres.status"}}
    elif message_type == MSG_EVALUATE:
        expected = {"array": set(), "metric": {"evaluateres.loss", "evaluateres.num_examples"},
                    "config": {"evaluateres.metrics", "evaluateres.status"}}
    elif message_type == MSG_PROPERTIES:
        expected = {"array": set(), "metric": set(), "config": {"getpropertiesres.properties", "getpropertiesres.status"}}
    else:
        return [f"message type {message_type!r:.40} may not leave the site"]
    problems = [f"unexpected {kind} record {name!r:.40}" for kind in expected for name in sorted(records[kind] - expected[kind])]
    problems += [f"missing {kind} record {name}" for kind in expected for name in sorted(expected[kind] - records[kind])]
    problems += _layout_problems(content)
    if problems:
        return problems
    try:
        return problems + _decoded_problems(message_type, content, spec)
    except Exception as exc:  # noqa: BLE001 - a reply Flower cannot decode must be blocked, and its error text not sent
        return [f"the reply does not decode as a legacy {message_type} reply ({type(exc).__name__})"]


def _decoded_problems(message_type: str, content: Any, spec: EgressSpec) -> list[str]:
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import Code, parameters_to_ndarrays

    problems: list[str] = []
    if message_type == MSG_TRAIN:
        res = compat.recorddict_to_fitres(content, keep_input=True)
        arrays = parameters_to_ndarrays(res.parameters)
        ok = res.status.code == Code.OK
        if ok:
            problems += _array_problems(arrays, spec)
        elif arrays:
            problems.append("a declined reply carries arrays")
        problems += _metric_problems(res.metrics, FIT_METRICS, spec)
        count, status = res.num_examples, res.status
    elif message_type == MSG_EVALUATE:
        res = compat.recorddict_to_evaluateres(content)
        # the evaluation's one release is its metrics vector: the loss and the count of held-out seizures stay here
        if res.loss != 0.0 or res.num_examples != 0:
            problems.append("an evaluation reply carries a loss or an example count (only the release vector may leave)")
        problems += _metric_problems(res.metrics, EVAL_METRICS, spec)
        count, status = res.num_examples, res.status
    else:
        res = compat.recorddict_to_getpropertiesres(content)
        problems += _metric_problems(res.properties, BUDGET_METRICS + (KEY_ACCEPTS,), spec)
        count, status = 0, res.status
    if not (isinstance(count, int) and 0 <= count <= MAX_METRIC):
        problems.append("num_examples is not a count")
    if len(str(status.message).encode("utf-8")) > MAX_TEXT_BYTES or (status.code == Code.OK and status.message not in ("", "Success")):
        problems.append("status message is not a short decline reason")
    return problems


def _log_block(spec: EgressSpec, message_type: str, problems: list[str]) -> None:
    log.error("egress policy blocked a %s reply: %s", message_type, "; ".join(problems))
    if spec.log_path is None:
        return
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "message_type": message_type,
                       "blocked": problems}, sort_keys=True) + "\n"
    fd = os.open(spec.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


class SiteFailed(RuntimeError):
    """The site's code failed on a message; what it said stays in the site's log."""


def failure_text(message_type: str) -> str:
    """The one text a failed message's reply carries (Flower sends an exception's text to the coordinator)."""
    return f"the site could not answer this {message_type} message; the reason is in the site's own log"


def make_egress_mod(spec_for: Callable[[Any], EgressSpec]) -> Callable[..., Any]:
    """A Flower mod checking every reply of the ClientApp; `spec_for(context)` builds the run's spec.

    A failure inside (an exception, or an error reply) leaves as `failure_text` only: an exception's text can
    name what the site holds (paths, counts, values), and Flower would send it to the coordinator verbatim."""

    def egress_mod(msg: Any, context: Any, call_next: Callable[..., Any]) -> Any:
        message_type = msg.metadata.message_type
        try:
            reply = call_next(msg, context)
        except Exception:
            log.exception("the site failed on a %s message (the coordinator gets a fixed text)", message_type)
            raise SiteFailed(failure_text(message_type)) from None
        if reply.has_error():
            from flwr.common import Error, Message

            log.error("the site's reply to a %s message is an error: %s", message_type, reply.error.reason)
            return Message(Error(code=reply.error.code, reason=failure_text(message_type)), reply_to=msg)
        spec = spec_for(context)
        problems = check_reply(msg.metadata.message_type, reply.content, spec)
        if problems:
            _log_block(spec, msg.metadata.message_type, problems)
            raise EgressBlocked(f"site {spec.site_id}: the egress policy blocked this reply; see the site's {EGRESS_LOG}")
        return reply

    return egress_mod


__all__ = ["EgressSpec", "EgressBlocked", "SiteFailed", "check_reply", "failure_text", "make_egress_mod", "EGRESS_LOG"]
