"""The ClientApp's refusals: another semiofed version's app, a SuperNode without a site, a bad run config."""

from __future__ import annotations

import pytest
from flwr.common import Context, RecordDict

from semiofed.client.federation.client_app import SiteClient, run_config, site_settings
from semiofed.common.errors import SemiofedError
from semiofed.common.federation.run_config import FederationConfig
from semiofed.common.version import semiofed_version


def _context(run: dict, node: dict) -> Context:
    return Context(run_id=7, node_id=1, node_config=node, state=RecordDict(), run_config=run)


def test_a_site_refuses_an_app_of_another_version(tmp_path):
    config = FederationConfig(semiofed_version="9.9.9").to_run_config()
    with pytest.raises(SemiofedError, match="runs only the code it installed"):
        SiteClient(_context(config, {"site-dir": str(tmp_path)}))


def test_the_app_of_this_version_is_accepted():
    config = FederationConfig(semiofed_version=semiofed_version(), rounds=4).to_run_config()
    assert run_config(_context(config, {})).rounds == 4


def test_a_supernode_without_a_site_directory_is_told_how_to_start():
    with pytest.raises(SemiofedError, match="site join"):
        site_settings({})


def test_unknown_run_config_keys_are_named():
    with pytest.raises(SemiofedError, match="partition-id"):
        FederationConfig.from_run_config({"partition-id": 3})


def test_run_config_round_trips_through_flower_values():
    config = FederationConfig(labels=("FOS", "TCS", "PNES"), streams=("keypoints",), secure_aggregation=False, rounds=2)
    assert FederationConfig.from_run_config(config.to_run_config()) == config
