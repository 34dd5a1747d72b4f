"""The CLI's output contract: `--format` is table or json everywhere, and every failure is one line and a documented exit code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from semiofed.cli import main as cli_main
from semiofed.cli.output import EXIT_CODES_HELP
from test_audit_cli import make_site

CLI = [sys.executable, "-m", "semiofed.cli"]
ENV = os.environ | {"COLUMNS": "300", "SEMIOFED_PROGRESS": "off"}


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    cli_main._register()
    return cli_main.app


def _leaf_commands(command: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    if isinstance(command, click.Group):
        return [leaf for name, sub in command.commands.items() for leaf in _leaf_commands(sub, (*path, name))]
    return [(path, command)]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=ENV, timeout=120)


def test_every_command_takes_the_same_format_choice(app):
    leaves = _leaf_commands(typer.main.get_command(app))
    assert len(leaves) >= 20  # site, models, audit, coordinator, phantom, predict, demo
    for path, command in leaves:
        options = [p for p in command.params if "--format" in getattr(p, "opts", [])]
        assert options, f"`semiofed {' '.join(path)}` has no --format"
        assert list(options[0].type.choices) == ["table", "json"], path
        assert options[0].default.value == "table", path


def test_unknown_format_is_a_usage_error_naming_the_choices(tmp_path):
    done = _run("site", "info", "--site-dir", str(tmp_path), "--format", "yaml")
    assert done.returncode == 2, done.stderr
    assert "'yaml' is not one of 'table', 'json'" in done.stderr
    assert done.stdout == "" and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [
    ["site", "leave", "--site-dir", "x"], ["models", "fetch"], ["coordinator", "stop", "--dir", "x"],
    ["audit", "report", "--ledgers", "x"], ["site", "budget", "--site-dir", "x"],
])
def test_commands_that_took_free_text_refuse_other_formats(app, args):
    result = CliRunner().invoke(app, [*args, "--format", "text"])
    assert result.exit_code == 2
    assert "'text' is not one of 'table', 'json'" in result.stderr


def test_site_init_json_is_one_object(tmp_path):
    done = _run("site", "init", "--site-dir", str(tmp_path / "s"), "--site-id", "s1", "--format", "json")
    assert done.returncode == 0, done.stderr
    created = json.loads(done.stdout)  # the whole of stdout is one JSON document
    assert created["site_id"] == "s1" and Path(created["public_key"]).is_file()
    assert created["privacy_policy"]["max_epsilon"] > 0


def test_site_init_table_output_is_unchanged(app, tmp_path):
    result = CliRunner().invoke(app, ["site", "init", "--site-dir", str(tmp_path / "s"), "--site-id", "s1"])
    assert result.exit_code == 0, result.output
    assert "site s1 created in" in result.stdout and "public key (give it to the coordinator" in result.stdout


def test_unwritable_report_is_one_line_exit_3(tmp_path):
    site = make_site(tmp_path / "hospital-a", "hospital-a", 2)
    ledgers = tmp_path / "ledgers" / "hospital-a"
    ledgers.mkdir(parents=True)
    (ledgers / "ledger.jsonl").write_bytes(site.layout.ledger_file.read_bytes())
    (ledgers / "site_key.pub").write_bytes(site.layout.public_key.read_bytes())

    done = _run("audit", "report", "--ledgers", str(ledgers.parent), "--out", "/proc/nope/x.html")
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "/proc/nope" in done.stderr and "Fix:" in done.stderr

    as_json = _run("audit", "report", "--ledgers", str(ledgers.parent), "--out", "/proc/nope/x.html", "--format", "json")
    assert as_json.returncode == 3
    error = json.loads(as_json.stdout)
    assert set(error) == {"error", "fix", "exit_code"} and error["exit_code"] == 3
    assert "/proc/nope" in error["error"] and error["fix"]


def test_domain_error_in_json_mode_is_one_json_object(app, tmp_path):
    args = ["site", "init", "--site-dir", str(tmp_path / "s"), "--site-id", "s1", "--format", "json"]
    assert CliRunner().invoke(app, args).exit_code == 0
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1
    error = json.loads(again.stdout)
    assert "already an initialised site" in error["error"] and error["fix"] and error["exit_code"] == 1
    assert again.stderr.count("\n") == 1 and "already an initialised site" in again.stderr  # for logs and people


def test_domain_error_in_table_mode_is_one_line_exit_1(tmp_path):
    done = _run("site", "info", "--site-dir", str(tmp_path / "nowhere"))
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and "Fix:" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


def _boom(*_args, **_kwargs):
    raise RuntimeError("boom in open_site")


def test_unexpected_error_is_exit_4_with_traceback_only_under_verbose(app, tmp_path, monkeypatch):
    monkeypatch.setattr("semiofed.cli.site_cmd.open_site", _boom)
    args = ["site", "info", "--site-dir", str(tmp_path)]

    quiet = CliRunner().invoke(app, args)
    assert quiet.exit_code == 4
    assert quiet.stderr.count("\n") == 1 and "RuntimeError: boom in open_site" in quiet.stderr
    assert "--verbose" in quiet.stderr and "Traceback" not in quiet.stderr

    verbose = CliRunner().invoke(app, ["--verbose", *args])
    assert verbose.exit_code == 4
    assert "Traceback (most recent call last)" in verbose.stderr and "_boom" in verbose.stderr

    as_json = CliRunner().invoke(app, [*args, "--format", "json"])
    assert as_json.exit_code == 4
    assert json.loads(as_json.stdout)["exit_code"] == 4 and "boom in open_site" in json.loads(as_json.stdout)["error"]


def test_interrupt_is_one_line_exit_130(app, tmp_path, monkeypatch):
    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("semiofed.cli.site_cmd.open_site", interrupted)
    result = CliRunner().invoke(app, ["site", "show", "--site-dir", str(tmp_path)])
    assert result.exit_code == 130
    assert result.stderr.count("\n") == 1 and "interrupted" in result.stderr


def test_commands_own_exit_status_is_kept(app, tmp_path):
    """`typer.Exit(1)` from a command (a failed check) is not turned into an error line."""
    result = CliRunner().invoke(app, ["models", "verify", "--model-dir", str(tmp_path), "--format", "json"])
    assert result.exit_code == 1
    rows = json.loads(result.stdout)
    assert rows and all(r["status"] == "missing" for r in rows) and result.stderr == ""


def test_root_help_lists_the_exit_codes(app):
    result = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0
    assert " ".join(EXIT_CODES_HELP.split()) in " ".join(result.stdout.split())
