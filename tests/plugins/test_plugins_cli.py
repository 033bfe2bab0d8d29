"""``numbanet plugins [--json] [--strict]`` (the body in numbanet._plugins_cli)."""

from __future__ import annotations

import json

from numbanet._plugins_cli import main

BROKEN = '''
@hookimpl
def numbanet_register_losses():
    raise RuntimeError("kaput")
'''


def test_json_lists_builtins_with_version_items_and_status(capsys):
    assert main(["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    builtin = data["plugins"][0]
    assert builtin["name"] == "numbanet" and builtin["status"] == "loaded"
    assert builtin["version"]
    assert "numbanet:adam" in builtin["optimizers"]
    assert "numbanet:cross_entropy" in builtin["losses"]
    assert builtin["optimizers"][0] == "numbanet:sgd"  # registration order


def test_broken_plugin_is_listed_with_its_error_and_strict_fails(make_dist, capsys):
    make_dist("kaput-plugin", BROKEN, version="2.5")
    assert main([]) == 0
    text = capsys.readouterr().out
    assert "kaput-plugin 2.5: failed" in text
    assert "error: hook numbanet_register_losses raised RuntimeError: kaput" in text
    assert main(["--strict", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    rec = {r["name"]: r for r in data["plugins"]}["kaput-plugin"]
    assert rec["status"] == "failed" and "kaput" in rec["error"]
    assert any("kaput-plugin" in w for w in data["warnings"])


def test_allow_list_is_shown(make_dist, monkeypatch, capsys):
    make_dist("skipped-plugin", BROKEN)
    monkeypatch.setenv("NUMBANET_PLUGINS", "something-else")
    assert main([]) == 0
    text = capsys.readouterr().out
    assert "NUMBANET_PLUGINS=something-else" in text
    assert "skipped-plugin 1.0: skipped" in text
