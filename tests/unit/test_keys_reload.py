"""Keys reload without a restart (issue 16), and the operator role.

Before, the keys file was read once at replica start: a key added to a running cluster
was refused and a removed one kept working. Now each replica re-reads the file when its
status changes (checked at most every 2 s), including a Kubernetes Secret's symlink swap.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tierline.cli.main import app as cli_app
from tierline.cluster.spec import AuthSpec
from tierline.deployments.gateway.pipeline.auth import (
    RELOAD_CHECK_S,
    KeyStore,
    Principal,
    ReloadingKeyStore,
    add_key,
    hash_key,
    load_key_store,
    read_keys_file,
    remove_keys,
)
from typer.testing import CliRunner

from tests.unit.test_gateway import make


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float = RELOAD_CHECK_S + 0.1) -> None:
        self.now += seconds


def bearer(key: str) -> str:
    return f"Bearer {key}"


def test_a_key_added_works_and_a_key_removed_is_refused_without_a_restart(
    tmp_path: Path,
) -> None:
    f = tmp_path / "keys.json"
    first = add_key(f, "team-a")
    clock = Clock()
    store = ReloadingKeyStore(f, {hash_key("env-k"): "default"}, clock=clock).load()
    assert store.authenticate(bearer(first)) == Principal("team-a")

    second = add_key(f, "team-b")
    # Checked at most every RELOAD_CHECK_S: within that the file is not even looked at.
    assert store.authenticate(bearer(second)) is None
    clock.advance()
    assert store.authenticate(bearer(second)) == Principal("team-b")

    assert remove_keys(f, key=first) == 1
    clock.advance()
    assert store.authenticate(bearer(first)) is None
    assert store.authenticate(bearer(second)) == Principal("team-b")
    # The environment's key is not in the file and stays.
    assert store.authenticate("Bearer env-k") == Principal("default")

    f.unlink()  # the Secret deleted: every file key is revoked
    clock.advance()
    assert store.authenticate(bearer(second)) is None
    assert len(store) == 1


def test_a_secret_mount_symlink_swap_is_picked_up(tmp_path: Path) -> None:
    """Kubernetes updates a mounted Secret by pointing `..data` at a new directory."""
    mount = tmp_path / "mount"
    mount.mkdir()
    old, new = mount / "..2026_01_01", mount / "..2026_01_02"
    old.mkdir()
    new.mkdir()
    key_a = add_key(old / "keys.json", "team-a")
    (mount / "..data").symlink_to(old.name)
    (mount / "keys.json").symlink_to("..data/keys.json")

    spec_store = load_key_store(AuthSpec(keys_file=str(mount / "keys.json")), environ={})
    assert isinstance(spec_store, ReloadingKeyStore)
    clock = Clock()
    store = ReloadingKeyStore(mount / "keys.json", clock=clock).load()
    assert store.authenticate(bearer(key_a)) == Principal("team-a")

    key_b = add_key(new / "keys.json", "team-b")  # the new Secret has only key b
    tmp_link = mount / "..data_tmp"
    tmp_link.symlink_to(new.name)
    os.replace(tmp_link, mount / "..data")  # the atomic swap kubelet does
    clock.advance()
    assert store.authenticate(bearer(key_b)) == Principal("team-b")
    assert store.authenticate(bearer(key_a)) is None


def test_a_broken_edit_keeps_the_keys_read_before(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    key = add_key(f, "team-a")
    clock = Clock()
    store = ReloadingKeyStore(f, clock=clock).load()
    f.write_text("{not json")
    clock.advance()
    assert store.authenticate(bearer(key)) == Principal("team-a")
    add_key(tmp_path / "other.json", "x")
    f.write_text(json.dumps({"keys": [{"tenant": "t", "sha256": hash_key(key)}]}))
    clock.advance()
    assert store.authenticate(bearer(key)) == Principal("t")


def test_reloads_within_seconds_on_a_real_clock(tmp_path: Path) -> None:
    import time

    f = tmp_path / "keys.json"
    add_key(f, "team-a")
    store = ReloadingKeyStore(f, check_every_s=0.05).load()
    later = add_key(f, "team-b")
    deadline = time.monotonic() + 2
    while store.authenticate(bearer(later)) is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.authenticate(bearer(later)) == Principal("team-b")


def test_the_operator_role_comes_from_the_keys_file(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    ops = add_key(f, "platform", role="operator")
    user = add_key(f, "team-a")
    entries = json.loads(f.read_text())["keys"]
    assert entries[0]["role"] == "operator" and "role" not in entries[1]
    assert read_keys_file(f)[hash_key(ops)] == Principal("platform", operator=True)
    store = load_key_store(AuthSpec(keys_file=str(f)), environ={"TIERLINE_API_KEY": "e"})
    assert store.authenticate(bearer(ops)) == Principal("platform", operator=True)
    assert store.authenticate(bearer(user)) == Principal("team-a", operator=False)
    assert store.authenticate("Bearer e") == Principal("default", operator=False)
    with pytest.raises(ValueError, match="role"):
        add_key(f, "x", role="admin")
    f.write_text(json.dumps({"keys": [{"tenant": "x", "sha256": "ab", "role": "root"}]}))
    with pytest.raises(ValueError, match=r"keys\[0\]\.role is 'root'"):
        read_keys_file(f)


def test_a_plain_key_store_still_takes_tenant_names() -> None:
    store = KeyStore({hash_key("k"): "team", hash_key("o"): Principal("ops", True)})
    assert store.authenticate("Bearer k") == Principal("team")
    assert store.authenticate("Bearer o") == Principal("ops", True)


def test_the_gateway_takes_a_new_key_and_drops_a_removed_one(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    old = add_key(f, "team-a")
    clock = Clock()
    store = ReloadingKeyStore(f, clock=clock).load()
    client, _ = make(keys=store)

    def status(key: str, c: TestClient = client) -> int:
        return c.get("/v1/models", headers={"Authorization": bearer(key)}).status_code

    assert status(old) == 200
    new = add_key(f, "team-b")
    remove_keys(f, key=old)
    clock.advance()
    assert (status(new), status(old)) == (200, 401)


def test_cli_keys_add_remove_and_list(tmp_path: Path) -> None:
    f = tmp_path / "keys.json"
    runner = CliRunner()
    out = runner.invoke(cli_app, ["keys", "add", "--tenant", "ops", "--file", str(f), "--operator"])
    assert out.exit_code == 0, out.output
    ops_key = out.stdout.strip().splitlines()[0]
    out = runner.invoke(cli_app, ["keys", "add", "--tenant", "a", "--file", str(f), "--role", "x"])
    assert out.exit_code != 0
    out = runner.invoke(cli_app, ["keys", "add", "--tenant", "a", "--file", str(f)])
    assert out.exit_code == 0
    assert read_keys_file(f)[hash_key(ops_key)] == Principal("ops", True)
    listing = runner.invoke(cli_app, ["keys", "list", "--file", str(f)])
    assert "operator" in listing.stdout and hash_key(ops_key)[:12] in listing.stdout
    prefix = hash_key(ops_key)[:10]
    out = runner.invoke(cli_app, ["keys", "remove", "--file", str(f), "--sha256", prefix])
    assert out.exit_code == 0, out.output
    assert hash_key(ops_key) not in read_keys_file(f) and len(read_keys_file(f)) == 1
    out = runner.invoke(cli_app, ["keys", "remove", "--file", str(f), "--sha256", "abc"])
    assert out.exit_code != 0
