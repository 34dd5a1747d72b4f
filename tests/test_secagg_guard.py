"""SecAgg+ as a site enforces it, against a coordinator that is not honest-but-curious: a site whose policy
requires SecAgg+ refuses a plain train message and a reconstruction threshold below its minimum, and every
site refuses an unmask stage that would reveal both secrets of one node (so that node's update alone).

Real site directories and policies; the messages are the ones Flower's SecAgg+ workflow sends (legacy configs).
"""

from __future__ import annotations

from dataclasses import replace
from unittest import mock

import pytest
from flwr.common.secure_aggregation.secaggplus_constants import Key, Stage

from semiofed.client.federation import client_app
from semiofed.client.federation.client_app import SecureAggregationRefused, secure_aggregation_mod
from semiofed.client.site import init_site
from semiofed.common.privacy.policy import PrivacyPolicy
from semiofed.common.errors import SiteError
from test_distributed_dp import RUN, _context, _train_message

LOCAL = replace(RUN, dp_mode="local", strategy="fedavg")


def _site(tmp_path, name, **policy):
    return init_site(tmp_path / name, name, PrivacyPolicy(max_epsilon=10.0, **policy))


def _answer(msg, context):
    # Flower's SecAgg+ stand-in answers "secagg"; the wire narrowing of its reply is tested in test_secagg.py
    with mock.patch.object(client_app, "secaggplus_mod", lambda m, c, n: "secagg"), \
            mock.patch.object(client_app, "narrow_masked_vector", lambda reply: reply):
        return secure_aggregation_mod(msg, context, lambda m, c: "plain")


def test_a_site_that_requires_secagg_refuses_a_plain_or_weak_round(tmp_path):
    strict = _site(tmp_path, "strict", require_secure_aggregation=True, min_secure_aggregation_threshold=3)
    context = _context(strict, LOCAL)
    with pytest.raises(SecureAggregationRefused, match="no SecAgg"):
        _answer(_train_message(None), context)  # the coordinator skips SecAgg+ for this site
    setup = {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: 4, Key.SHARE_NUMBER: 4, Key.THRESHOLD: 2}
    with pytest.raises(SecureAggregationRefused, match="threshold is 2"):
        _answer(_train_message(setup), context)
    assert _answer(_train_message({**setup, Key.THRESHOLD: 3}), context) == "secagg"
    # a site without the requirement keeps answering plain local-DP rounds (each update carries the full noise)
    assert _answer(_train_message(None), _context(_site(tmp_path, "default"), LOCAL)) == "plain"


def test_every_site_refuses_an_unmask_stage_that_would_reveal_one_nodes_update(tmp_path):
    context = _context(_site(tmp_path, "any"), LOCAL)
    both = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [11, 12, 13], Key.DEAD_NODE_ID_LIST: [12]}
    with pytest.raises(SecureAggregationRefused, match="both alive and dropped"):
        _answer(_train_message(both), context)
    itself = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [12, 13], Key.DEAD_NODE_ID_LIST: [11]}  # we are 11
    with pytest.raises(SecureAggregationRefused, match="both alive and dropped"):
        _answer(_train_message(itself), context)
    honest = {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: [11, 13], Key.DEAD_NODE_ID_LIST: [12]}
    assert _answer(_train_message(honest), context) == "secagg"


def test_the_requirement_can_be_tightened_never_loosened(tmp_path):
    strict = PrivacyPolicy(require_secure_aggregation=True, min_secure_aggregation_threshold=3)
    assert strict.allows_change_to(replace(strict, min_secure_aggregation_threshold=5))
    assert not strict.allows_change_to(replace(strict, require_secure_aggregation=False))
    assert not strict.allows_change_to(replace(strict, min_secure_aggregation_threshold=2))
    assert PrivacyPolicy().allows_change_to(strict)
    with pytest.raises(SiteError, match="below 2"):
        PrivacyPolicy(min_secure_aggregation_threshold=1)


def test_the_share_graph_is_sparse_and_the_sum_never_wraps_at_any_number_of_sites():
    from semiofed.server.federation.server_app import SECAGG_MODULUS, secagg_shape

    for n in (3, 5, 10, 50, 200, 500, 2000):
        shape = secagg_shape(LOCAL, n)
        assert n * shape["quantization_range"] < SECAGG_MODULUS  # n sites' quantised values sum without wrapping
        if isinstance(shape["num_shares"], int):
            k, t = shape["num_shares"], shape["reconstruction_threshold"]
            assert k < n and k <= 2 * (n - 1).bit_length() + 1 and k // 2 < t <= k  # above half of the neighbours
        else:
            assert shape["num_shares"] == 1.0 and n <= 2 * (n - 1).bit_length() + 1  # small: the complete graph
    assert secagg_shape(LOCAL, 500)["num_shares"] == 19 and secagg_shape(LOCAL, 500)["reconstruction_threshold"] == 10
    assert secagg_shape(LOCAL, 3) == {"num_shares": 1.0, "reconstruction_threshold": 0.5, "quantization_range": 2**24}
    # distributed DP keeps the complete graph and the threshold each site checks against its own K
    assert secagg_shape(RUN, 500)["reconstruction_threshold"] == RUN.min_sites and secagg_shape(RUN, 500)["num_shares"] == 1.0
