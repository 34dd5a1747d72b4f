"""The egress policy on real replies of a real site: honest fit, evaluate and budget replies leave, smuggled data does not.

Replies are built with Flower's own legacy encoders (what the ClientApp's
message handler sends), for a site made with `init_site` whose ledger holds
one signed release, against the spec `client_app.egress_spec` builds from
the run's real model shapes. No Flower process is started.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import Array, ConfigRecord, Context, Error, Message, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.client import Client, ClientApp
from flwr.client.mod import secaggplus_mod
from flwr.common import (
    Code,
    EvaluateRes,
    FitRes,
    GetPropertiesIns,
    GetPropertiesRes,
    Parameters,
    Status,
    ndarrays_to_parameters,
)
from flwr.compat.common.recorddict_compat import (
    evaluateres_to_recorddict,
    fitres_to_recorddict,
    getpropertiesres_to_recorddict,
)

from semiofed.client.federation.client_app import egress_spec
from semiofed.common.errors import SemiofedError
from semiofed.client.federation.egress import (
    EGRESS_LOG,
    EgressBlocked,
    EgressSpec,
    SiteFailed,
    check_reply,
    failure_text,
    make_egress_mod,
)
from semiofed.client.training.federated_round import SiteSettings
from semiofed.common.learning.classifier import classifier_config
from semiofed.common.learning.weights import get_weights, to_wire
from semiofed.common.privacy.budgeted_run import record_release
from semiofed.client.site import init_site
from semiofed.common.learning.classifier import build_classifier
from semiofed.common.federation.run_config import (
    BUDGET_METRICS,
    CFG_ROUND,
    CFG_RUN_ID,
    EVAL_METRICS,
    FIT_METRICS,
    KEY_ACCEPTS,
    KEY_DECLINE_REASON,
    KEY_FEATURE_SHA,
    KEY_LEDGER_HEAD,
    KEY_SITE_ID,
    KEY_VERSION,
    FederationConfig,
)
from semiofed.common.privacy.keys import load_site_private_key
from semiofed.common.privacy.ledger import KIND_FEDERATED
from semiofed.common.privacy.ledger_writer import ledger_head
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.privacy.accountant import _epsilon_of
from semiofed.common.version import semiofed_version

SITE = "hospital-a"
PSEUDONYM = "p7f3a9c2e"  # what a patient pseudonym looks like; it must never leave in a metric
FEATURE_SHA = "a5b185914226a2ad4d5de1a2c9f9974f1c661039daa651c8aa28986144e3141b"
CONFIG = FederationConfig(temporal="attn", hidden=8, embed_dim=8, n_segments=4, stcnn_dim=16,
                          semiofed_version=semiofed_version())
# what may leave: the update's wire form, one flat float32 vector of the model's size (common/learning/weights.py)
CONFIG_SHAPES = ((sum(w.size for w in get_weights(build_classifier(classifier_config(CONFIG), seed=0))),),)
SERVER_FIT_CONFIG = {CFG_ROUND: 1, CFG_RUN_ID: "4242"}  # what the coordinator sends with a fit instruction


def _head(ledger: Path, key: Any, site_id: str) -> str:
    """A signed ledger head as the site sends it (SiteTask.head: compact, sorted JSON)."""
    return json.dumps(ledger_head(ledger, key, site_id), separators=(",", ":"), sort_keys=True)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("egress") / SITE
    site = init_site(root, SITE, PrivacyPolicy(max_epsilon=8.0))
    record_release(site.privacy, kind=KIND_FEDERATED, run_id="4241", round=1, update_sha256="ab" * 32, noise_multiplier=1.1,
                   sample_rate=0.5, steps=2, clipping_norm=1.0,
                   epsilon_cumulative=_epsilon_of([(1.1, 0.5, 2)], site.policy.target_delta))
    return site


@pytest.fixture(scope="module")
def context(site) -> Context:
    return Context(run_id=4242, node_id=11, node_config={"site-dir": str(site.layout.root)}, state=RecordDict(),
                   run_config=CONFIG.to_run_config())


@pytest.fixture(scope="module")
def spec(site, context) -> EgressSpec:
    return egress_spec(context, config=CONFIG, settings=SiteSettings(site.layout.root))


@pytest.fixture(scope="module")
def head(site) -> str:
    return _head(site.layout.ledger_file, load_site_private_key(site.layout.private_key), SITE)


@pytest.fixture(scope="module")
def weights() -> list[np.ndarray]:
    return to_wire(get_weights(build_classifier(classifier_config(CONFIG), seed=0)))


def _identity(head: str) -> dict[str, Any]:
    return {KEY_SITE_ID: SITE, KEY_VERSION: semiofed_version(), KEY_LEDGER_HEAD: head, KEY_FEATURE_SHA: FEATURE_SHA}


def fit_reply(weights: list[np.ndarray], head: str, *, metrics: dict[str, Any] | None = None, num_examples: int = 6,
              status: Status | None = None) -> RecordDict:
    """What SiteClient.fit answers, encoded the way Flower's legacy handler sends it."""
    values = {name: 0.5 for name in FIT_METRICS} | {"steps": 4.0, "train_patients": 6.0, "seconds": 12.5}
    metrics = {**values, **_identity(head)} if metrics is None else metrics
    res = FitRes(status or Status(Code.OK, ""), ndarrays_to_parameters(weights), num_examples, metrics)
    return fitres_to_recorddict(res, keep_input=False)


def evaluate_reply(*, metrics: dict[str, Any] | None = None, loss: float = 0.0, num_examples: int = 0) -> RecordDict:
    """What SiteClient.evaluate answers: the release vector only (no loss, no example count)."""
    values = {name: 0.75 for name in EVAL_METRICS}
    metrics = {**values, KEY_SITE_ID: SITE} if metrics is None else metrics
    return evaluateres_to_recorddict(EvaluateRes(Status(Code.OK, ""), loss, num_examples, metrics))


def budget_reply(head: str, *, props: dict[str, Any] | None = None) -> RecordDict:
    """What SiteClient.get_properties answers to the coordinator's budget query."""
    values = {"epsilon_spent": 0.9, "epsilon_max": 8.0, "epsilon_remaining": 7.1, "epsilon_projected": 1.6, "delta": 1e-5}
    assert set(values) == set(BUDGET_METRICS)
    props = {**values, KEY_ACCEPTS: 1, KEY_DECLINE_REASON: "", **_identity(head)} if props is None else props
    return getpropertiesres_to_recorddict(GetPropertiesRes(Status(Code.OK, ""), props))


# --- honest replies leave ------------------------------------------------------
def test_honest_replies_pass(spec, head, weights):
    assert check_reply("train", fit_reply(weights, head), spec) == []
    assert check_reply("evaluate", evaluate_reply(), spec) == []
    assert check_reply("get_properties", budget_reply(head), spec) == []


def test_honest_declines_pass(spec, head):
    """A site that declines says why: a budget answer with accepts 0, or a fit reply with no arrays."""
    declined = budget_reply(head, props={KEY_ACCEPTS: 0, KEY_DECLINE_REASON: "site hospital-a has spent epsilon 8.000 of its 8",
                                         **_identity(head)})
    assert check_reply("get_properties", declined, spec) == []
    no_round = FitRes(Status(Code.FIT_NOT_IMPLEMENTED, "declined: site hospital-a declines round 3"), Parameters([], ""), 0, {})
    assert check_reply("train", fitres_to_recorddict(no_round, keep_input=False), spec) == []


# --- everything else is blocked and named --------------------------------------
def _other_key_head(tmp_path: Path) -> str:
    """A well-formed head with this site's id, signed by a key that is not the site's."""
    ledger = tmp_path / "ledger.jsonl"
    ledger.write_bytes(b"")
    return _head(ledger, ec.generate_private_key(ec.SECP384R1()), SITE)


def _replace_array(weights: list[np.ndarray], index: int, array: np.ndarray) -> list[np.ndarray]:
    return [array if i == index else w for i, w in enumerate(weights)]


def _nan(weights: list[np.ndarray]) -> list[np.ndarray]:
    poisoned = weights[0].copy()
    poisoned[5] = np.nan
    return _replace_array(weights, 0, poisoned)


def _with_extra_record(content: RecordDict) -> RecordDict:
    content.config_records["patients"] = ConfigRecord({PSEUDONYM: "TCS"})
    return content


def _fit_metrics(head: str, **extra: Any) -> dict[str, Any]:
    return {**{name: 0.5 for name in FIT_METRICS}, **_identity(head), **extra}


# (message type, reply builder(weights, head, tmp_path), words the problem list must contain)
BLOCKED: dict[str, tuple[str, Callable[..., RecordDict], str]] = {
    "per-patient value as an extra metric key": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, **{f"{PSEUDONYM}_tcs_probability": 0.93})),
        f"metric '{PSEUDONYM}_tcs_probability' is not on the whitelist"),
    "per-patient value in an evaluate reply": (
        "evaluate", lambda w, h, t: evaluate_reply(metrics={"cm_0_0": 0.75, KEY_SITE_ID: SITE, f"loss_{PSEUDONYM}": 2.3}),
        f"metric 'loss_{PSEUDONYM}' is not on the whitelist"),
    "pseudonym as a whitelisted metric's value": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, epsilon_spent=PSEUDONYM)),
        "metric epsilon_spent is not a number"),
    "pseudonym as a budget figure": (
        "get_properties", lambda w, h, t: budget_reply(h, props={"epsilon_spent": PSEUDONYM, KEY_ACCEPTS: 1}),
        "metric epsilon_spent is not a number"),
    "pseudonym in place of the feature extractor's hash": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, **{KEY_FEATURE_SHA: PSEUDONYM})),
        f"text {KEY_FEATURE_SHA} is not a sha256"),
    "pseudonym in place of the version": (
        "get_properties", lambda w, h, t: budget_reply(h, props={KEY_ACCEPTS: 1, KEY_VERSION: PSEUDONYM}),
        f"text {KEY_VERSION} is not this site's semiofed version"),
    "boolean metric": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, steps=True)),
        "metric steps is not a number"),
    "the share of clipped gradients (a statistic of private gradients)": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, clipped_fraction=0.4)),
        "metric 'clipped_fraction' is not on the whitelist"),
    "the server's config echoed back": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, **SERVER_FIT_CONFIG)),
        f"metric '{CFG_ROUND}' is not on the whitelist; metric '{CFG_RUN_ID}' is not on the whitelist"),
    "an extra array appended": (
        "train", lambda w, h, t: fit_reply(w + [np.zeros(3, np.float32)], h), f"{len(CONFIG_SHAPES) + 1} arrays instead of the model's"),
    "an array with a wrong shape": (
        "train", lambda w, h, t: fit_reply(_replace_array(w, 0, np.zeros(w[0].size + 1, np.float32)), h),
        "array 0 is float32"),
    "the per-array form instead of the wire form": (
        "train", lambda w, h, t: fit_reply(get_weights(build_classifier(classifier_config(CONFIG), seed=0)), h),
        "arrays instead of the model's 1"),
    "a float64 array": (
        "train", lambda w, h, t: fit_reply(_replace_array(w, 0, w[0].astype(np.float64)), h), "array 0 is float64"),
    "a NaN array": ("train", lambda w, h, t: fit_reply(_nan(w), h), "array 0 has non-finite values"),
    "arrays in a declined fit reply": (
        "train", lambda w, h, t: fit_reply(w, h, metrics={}, status=Status(Code.FIT_NOT_IMPLEMENTED, "declined")),
        "a declined reply carries arrays"),
    "an oversized metric value": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, seconds=3.2e9)),
        "metric seconds is not finite or out of range"),
    "an exact loss next to the release": ("evaluate", lambda w, h, t: evaluate_reply(loss=0.61),
                                          "an evaluation reply carries a loss or an example count"),
    "the held-out seizure count next to the release": ("evaluate", lambda w, h, t: evaluate_reply(num_examples=8),
                                                       "an evaluation reply carries a loss or an example count"),
    "an exact accuracy next to the release": (
        "evaluate", lambda w, h, t: evaluate_reply(metrics={"cm_0_0": 0.75, "accuracy": 0.8, KEY_SITE_ID: SITE}),
        "metric 'accuracy' is not on the whitelist"),
    "an oversized decline reason": (
        "get_properties", lambda w, h, t: budget_reply(h, props={KEY_ACCEPTS: 0, KEY_DECLINE_REASON: "x" * 2000}),
        f"text {KEY_DECLINE_REASON} is not a short string"),
    "a status message on a successful reply": (
        "train", lambda w, h, t: fit_reply(w, h, status=Status(Code.OK, PSEUDONYM)), "status message is not a short decline reason"),
    "a negative example count": ("train", lambda w, h, t: fit_reply(w, h, num_examples=-1), "num_examples is not a count"),
    "an extra record in the RecordDict": (
        "evaluate", lambda w, h, t: _with_extra_record(evaluate_reply()), "unexpected config record 'patients'"),
    "an extra metric record in a fit reply": (
        "train", lambda w, h, t: _add(fit_reply(w, h), "metric", "per_patient", MetricRecord({"p0": 0.1})),
        "unexpected metric record 'per_patient'"),
    "an array record in a budget reply": (
        "get_properties", lambda w, h, t: _add(budget_reply(h), "array", "embeddings", fit_reply(w, h).array_records["fitres.parameters"]),
        "unexpected array record 'embeddings'"),
    "a ledger head signed by another key": (
        "train", lambda w, h, t: fit_reply(w, h, metrics=_fit_metrics(h, **{KEY_LEDGER_HEAD: _other_key_head(t)})),
        f"text {KEY_LEDGER_HEAD} is not this site's signed ledger head"),
    "a ledger head that is not JSON": (
        "get_properties", lambda w, h, t: budget_reply(h, props={KEY_ACCEPTS: 1, KEY_LEDGER_HEAD: PSEUDONYM}),
        f"text {KEY_LEDGER_HEAD} is not JSON"),
    "a site id that is not the site's": (
        "evaluate", lambda w, h, t: evaluate_reply(metrics={"cm_0_0": 0.75, KEY_SITE_ID: "hospital-b"}),
        f"text {KEY_SITE_ID} is not this site's id"),
    "an unknown message type": ("query", lambda w, h, t: budget_reply(h), "message type 'query' may not leave the site"),
}


def _add(content: RecordDict, kind: str, name: str, record: Any) -> RecordDict:
    getattr(content, f"{kind}_records")[name] = record
    return content


@pytest.mark.parametrize("case", list(BLOCKED))
def test_reply_is_blocked_and_the_violation_named(case, spec, head, weights, tmp_path):
    message_type, build, expected = BLOCKED[case]
    problems = check_reply(message_type, build([w.copy() for w in weights], head, tmp_path), spec)
    assert problems, f"{case}: the reply would have left the site"
    assert expected in "; ".join(problems), problems


def test_spec_carries_the_run_models_shapes_and_the_site(spec, site):
    assert spec.array_shapes == CONFIG_SHAPES
    assert spec.site_id == SITE and spec.log_path == site.layout.root / EGRESS_LOG


def test_a_spec_for_another_model_shape_blocks_this_models_weights(site, context, head, weights):
    """Shapes come from the run config: a site cannot send another (e.g. wider, more revealing) model than the run trains."""
    wider = egress_spec(context, config=replace(CONFIG, hidden=16), settings=SiteSettings(site.layout.root))
    assert wider.array_shapes != CONFIG_SHAPES
    assert any("expected float32" in p for p in check_reply("train", fit_reply(weights, head), wider))


# --- the mod, on real Flower messages ------------------------------------------
def _instruction(message_type: str, content: RecordDict | None = None) -> Message:
    """A message as the SuperNode hands it to the ClientApp (metadata from the SuperLink)."""
    metadata = Metadata(run_id=4242, message_id="msg-1", src_node_id=1, dst_node_id=11, reply_to_message_id="",
                        group_id="1", created_at=time.time(), ttl=600.0, message_type=message_type)
    return make_message(metadata=metadata, content=content or RecordDict())


def _log_lines(site) -> list[dict[str, Any]]:
    path = site.layout.root / EGRESS_LOG
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def test_mod_lets_an_honest_reply_through_unchanged(site, context, head, weights):
    mod = make_egress_mod(lambda ctx: egress_spec(ctx, config=CONFIG, settings=SiteSettings(site.layout.root)))
    before = _log_lines(site)
    for message_type, content in (("train", fit_reply(weights, head)), ("evaluate", evaluate_reply()),
                                  ("get_properties", budget_reply(head))):
        msg = _instruction(message_type)
        reply = Message(content, reply_to=msg)
        assert mod(msg, context, lambda m, c: reply) is reply
    assert _log_lines(site) == before


def test_mod_blocks_a_smuggling_reply_without_repeating_it(site, context, head, weights):
    mod = make_egress_mod(lambda ctx: egress_spec(ctx, config=CONFIG, settings=SiteSettings(site.layout.root)))
    secret_name, secret_value = f"{PSEUDONYM}_tcs_probability", 0.934217
    content = fit_reply(weights, head, metrics=_fit_metrics(head, **{secret_name: secret_value}, epsilon_round=PSEUDONYM))
    msg = _instruction("train")
    before = len(_log_lines(site))
    with pytest.raises(EgressBlocked) as raised:
        mod(msg, context, lambda m, c: Message(content, reply_to=m))
    text = str(raised.value)
    # the error reaches the coordinator (Flower sends its text back): nothing of the reply may be in it
    for leaked in (PSEUDONYM, secret_name, str(secret_value), "epsilon_round", "tcs"):
        assert leaked not in text, text
    assert SITE in text and EGRESS_LOG in text

    lines = _log_lines(site)
    assert len(lines) == before + 1
    entry = lines[-1]
    assert entry["message_type"] == "train"
    assert any(secret_name in p and "not on the whitelist" in p for p in entry["blocked"]), entry
    assert any(p == "metric epsilon_round is not a number" for p in entry["blocked"]), entry
    assert str(secret_value) not in json.dumps(entry)  # names only, never values
    assert (site.layout.root / EGRESS_LOG).stat().st_mode & 0o077 == 0  # the site's log is owner-only


def test_an_error_reply_leaves_with_a_fixed_text_only(site, context):
    mod = make_egress_mod(lambda ctx: pytest.fail("an error reply carries nothing to check"))
    msg = _instruction("train")
    reply = Message(Error(code=3, reason=f"training failed on {PSEUDONYM}: 3 of 7 patients"), reply_to=msg)
    sent = mod(msg, context, lambda m, c: reply)
    assert sent.has_error() and sent.error.code == 3
    assert sent.error.reason == failure_text("train")
    assert PSEUDONYM not in sent.error.reason and "patients" not in sent.error.reason


@pytest.mark.parametrize("message_type", ["train", "evaluate", "get_properties"])
def test_an_exception_in_the_site_code_leaves_as_a_fixed_text(site, context, message_type, caplog):
    """Flower sends an exception's text to the coordinator; the site's text (counts, paths, pseudonyms) stays."""
    mod = make_egress_mod(lambda ctx: pytest.fail("nothing to check"))

    def failing(m, c):
        raise SemiofedError(f"site {SITE} has 3 patients ({PSEUDONYM}, ...) in /data/ward-7", "prepare more")

    with caplog.at_level("ERROR"), pytest.raises(SiteFailed) as raised:
        mod(_instruction(message_type), context, failing)
    assert str(raised.value) == failure_text(message_type)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__
    assert PSEUDONYM in caplog.text  # the site's own log keeps the reason


class LeakyClient(Client):
    """A site client with a bug: it reports a patient's pseudonym with its budget."""

    def __init__(self, head: str) -> None:
        self.head = head

    def get_properties(self, ins: GetPropertiesIns) -> GetPropertiesRes:
        props = {"epsilon_spent": 0.9, KEY_ACCEPTS: 1, **_identity(self.head), "worst_patient": PSEUDONYM}
        return GetPropertiesRes(Status(Code.OK, ""), props)


class HonestClient(LeakyClient):
    def get_properties(self, ins: GetPropertiesIns) -> GetPropertiesRes:
        return GetPropertiesRes(Status(Code.OK, ""), {"epsilon_spent": 0.9, KEY_ACCEPTS: 1, **_identity(self.head)})


def test_client_app_with_the_mod_stops_a_leaky_client(site, context, head):
    """The ClientApp stack the site runs (secaggplus_mod outside, the egress mod inside) on a budget query."""
    mods = [secaggplus_mod, make_egress_mod(lambda ctx: egress_spec(ctx, config=CONFIG, settings=SiteSettings(site.layout.root)))]
    ins = RecordDict({"getpropertiesins.config": ConfigRecord({"query": "budget", CFG_RUN_ID: "4242", CFG_ROUND: 1})})

    honest = ClientApp(client_fn=lambda ctx: HonestClient(head), mods=mods)
    reply = honest(_instruction("get_properties", ins), context)
    assert reply.content.config_records["getpropertiesres.properties"][KEY_ACCEPTS] == 1

    leaky = ClientApp(client_fn=lambda ctx: LeakyClient(head), mods=mods)
    ins = RecordDict({"getpropertiesins.config": ConfigRecord({"query": "budget", CFG_RUN_ID: "4242", CFG_ROUND: 1})})
    with pytest.raises(EgressBlocked) as raised:
        leaky(_instruction("get_properties", ins), context)
    assert PSEUDONYM not in str(raised.value) and "worst_patient" not in str(raised.value)
    assert "metric 'worst_patient' is not on the whitelist" in _log_lines(site)[-1]["blocked"]


# --- known holes (see the report): the policy checks decoded values, not every byte that leaves ------------------
def _extra_key(record_kind: str, record: str, value: Any) -> Callable[..., RecordDict]:
    def build(w: list[np.ndarray], h: str) -> RecordDict:
        content = evaluate_reply() if record.startswith("evaluateres") else fit_reply(w, h)
        getattr(content, f"{record_kind}_records")[record][PSEUDONYM] = value
        return content
    return build


HOLES = {
    "extra key in the status record": ("train", _extra_key("config", "fitres.status", "TCS")),
    "extra key in the num_examples record": ("train", _extra_key("metric", "fitres.num_examples", 3.0)),
    "extra key in the loss record": ("evaluate", _extra_key("metric", "evaluateres.loss", 3.0)),
}


@pytest.mark.parametrize("case", list(HOLES))
def test_extra_keys_in_fixed_records_are_blocked(case, spec, head, weights):
    message_type, build = HOLES[case]
    assert check_reply(message_type, build([w.copy() for w in weights], head), spec)


@pytest.mark.parametrize("where", ["_empty entry", "array dtype field"])
def test_bytes_outside_the_decoded_arrays_are_blocked(where, spec, head, weights):
    content = fit_reply([w.copy() for w in weights], head)
    record = content.array_records["fitres.parameters"]
    if where == "_empty entry":
        record["_empty"] = Array(data=PSEUDONYM.encode(), dtype="", stype="numpy.ndarray", shape=())
    else:
        first = record["0"]
        record["0"] = Array(data=first.data, dtype=PSEUDONYM, stype=first.stype, shape=())
    assert check_reply("train", content, spec)


@pytest.mark.parametrize("malformed", ["list metric", "status code", "array bytes"])
def test_a_malformed_reply_is_blocked_not_raised(malformed, spec, head, weights):
    content = fit_reply([w.copy() for w in weights], head)
    if malformed == "list metric":
        content.config_records["fitres.metrics"]["epsilon_spent"] = [0.1, 0.2]
    elif malformed == "status code":
        content.config_records["fitres.status"]["code"] = 31337  # the value is echoed in the ValueError's text
    else:
        content.array_records["fitres.parameters"]["0"] = Array(data=PSEUDONYM.encode(), dtype="", stype="numpy.ndarray",
                                                                  shape=())
    assert check_reply("train", content, spec)


# --- the production ClientApp (client_app.app, what the site worker calls), not a hand-built stack -----------------
def _production_context(site) -> Context:
    """A fresh context per message sequence: SecAgg+ keeps its protocol state in context.state."""
    return Context(run_id=4242, node_id=11, node_config={"site-dir": str(site.layout.root)}, state=RecordDict(),
                   run_config=CONFIG.to_run_config())


def test_the_production_app_wraps_the_egress_policy_inside_secure_aggregation():
    """docs/federation.md: the egress policy sits inside secaggplus_mod. Flower 1.41 keeps a ClientApp's mods in
    `_mods` (outermost first) and wraps them around the legacy handler once, when the app is built."""
    from semiofed.client.federation import client_app

    mods = client_app.app._mods
    assert len(mods) == 2
    assert mods[0] is client_app.secure_aggregation_mod  # outermost: calls Flower's secaggplus_mod on train messages
    assert mods[1].__qualname__ == make_egress_mod(lambda ctx: None).__qualname__  # inside it: the egress policy


@pytest.mark.parametrize("leak", ["a loss and an example count", "a per-patient metric"])
def test_the_production_app_blocks_a_leaky_evaluation_reply(site, head, leak, monkeypatch):
    """A bug in the site's code puts more than the release vector into an evaluation reply: the app that runs at the
    site must not send it. The honest reply of the same code path leaves unchanged (so the block is the policy's)."""
    from flwr.common import EvaluateIns
    from flwr.compat.common.recorddict_compat import evaluateins_to_recorddict

    from semiofed.client.federation import client_app

    honest = {**{name: 0.75 for name in EVAL_METRICS}, KEY_SITE_ID: SITE}
    leaky = {"a loss and an example count": EvaluateRes(Status(Code.OK, ""), 0.6931, 7, honest),
             "a per-patient metric": EvaluateRes(Status(Code.OK, ""), 0.0, 0, {**honest, f"{PSEUDONYM}_nll": 2.31})}
    answer = {"reply": EvaluateRes(Status(Code.OK, ""), 0.0, 0, honest)}
    monkeypatch.setattr(client_app.SiteClient, "evaluate", lambda self, ins: answer["reply"])

    def ask() -> Message:
        ins = EvaluateIns(ndarrays_to_parameters([]), {CFG_ROUND: 2, CFG_RUN_ID: "4242"})
        return client_app.app(_instruction("evaluate", evaluateins_to_recorddict(ins, keep_input=True)),
                              _production_context(site))

    reply = ask()
    assert not reply.has_error() and dict(reply.content.config_records["evaluateres.metrics"]) == honest

    answer["reply"] = leaky[leak]
    before = len(_log_lines(site))
    with pytest.raises(EgressBlocked) as raised:
        ask()
    assert PSEUDONYM not in str(raised.value) and "0.6931" not in str(raised.value)
    lines = _log_lines(site)
    assert len(lines) == before + 1 and lines[-1]["message_type"] == "evaluate"
    expected = "carries a loss or an example count" if leak.startswith("a loss") else "is not on the whitelist"
    assert any(expected in p for p in lines[-1]["blocked"]), lines[-1]


def _secagg_train(site, fit_reply_of: Callable[[], FitRes], monkeypatch) -> Message:
    """One node's SecAgg+ round (threshold 1) through the production app, up to the masked update it sends."""
    from flwr.common import FitIns
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
    from flwr.compat.common.recorddict_compat import fitins_to_recorddict

    from semiofed.client.federation import client_app

    calls: list[str] = []

    def fit(self, ins):
        calls.append("fit")
        return fit_reply_of()

    monkeypatch.setattr(client_app.SiteClient, "fit", fit)
    context = _production_context(site)

    def stage(configs: dict[str, Any], content: RecordDict | None = None) -> Message:
        content = content or RecordDict()
        content.config_records[RECORD_KEY_CONFIGS] = ConfigRecord(configs)
        return client_app.app(_instruction("train", content), context)

    setup = stage({Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 1, Key.SHARE_NUMBER: 1, Key.THRESHOLD: 1,
                   Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**16, Key.MOD_RANGE: 2**32, Key.MAX_WEIGHT: 1000.0})
    keys = setup.content.config_records[RECORD_KEY_CONFIGS]
    stage({Key.STAGE: Stage.SHARE_KEYS, "11": [keys[Key.PUBLIC_KEY_1], keys[Key.PUBLIC_KEY_2]]})
    assert calls == []  # the key stages never reach the site's code
    ins = fitins_to_recorddict(FitIns(ndarrays_to_parameters([]), {CFG_ROUND: 1, CFG_RUN_ID: "4242"}), keep_input=True)
    reply = stage({Key.STAGE: Stage.COLLECT_MASKED_VECTORS, Key.CIPHERTEXT_LIST: [], Key.SOURCE_LIST: []}, ins)
    assert calls == ["fit"]
    return reply


def test_the_production_app_checks_a_secagg_update_before_it_is_masked(site, head, weights, monkeypatch):
    """Once masked, an update is uniform noise to anyone but the sum: a policy outside SecAgg+ could not see what
    it carries (and would block every honest masked reply as an unknown record). The production app checks the
    plain update: an honest one leaves masked, one that smuggles an extra array of per-patient values does not."""
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    def honest() -> FitRes:
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters(weights), 6, _fit_metrics(head))

    reply = _secagg_train(site, honest, monkeypatch)
    assert not reply.has_error()
    assert all(len(record) == 0 for record in reply.content.array_records.values())  # no plain array leaves
    masked = [bytes_to_ndarray(b) for b in reply.content.config_records[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]]
    assert [m.dtype for m in masked] == [np.uint32] * len(masked) and masked[-1].size == weights[0].size

    per_patient = np.array([0.934217, 0.118, 0.5], dtype=np.float32)  # e.g. each training patient's loss

    def smuggling() -> FitRes:
        return FitRes(Status(Code.OK, ""), ndarrays_to_parameters([*weights, per_patient]), 6, _fit_metrics(head))

    before = len(_log_lines(site))
    with pytest.raises(EgressBlocked):
        _secagg_train(site, smuggling, monkeypatch)
    lines = _log_lines(site)
    assert len(lines) == before + 1 and lines[-1]["message_type"] == "train"
    assert any("2 arrays instead of the model's 1" in p for p in lines[-1]["blocked"]), lines[-1]
