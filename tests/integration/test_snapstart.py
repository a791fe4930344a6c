"""SnapStart and the choice of isolation backend, through boto3 against `flicker up`.

On the sandbox backend (the session server) a SnapStart version cannot be
snapshotted: it is Active at once with OptimizationStatus Off, and its
environments still run the SnapStart runtime protocol (before-snapshot and
after-restore hooks, AWS_LAMBDA_INITIALIZATION_TYPE=snap-start).  On the
microvm backend (needs the guest images from `make guest`) PublishVersion
leaves the version Pending while a worker boots it, runs Init and saves the
VM; cold starts then restore that snapshot (REPORT says Restore Duration),
clones differ in their random numbers and boot ids, and a damaged snapshot
falls back to a full Init with a log line.
"""
import json
import os
import re
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from harness import BUILD, SLOW, client_error_code, create_function, do_invoke, wait_until

GUEST_DIR = Path(os.environ.get("FLICKER_GUEST_DIR") or (BUILD / "guest"))
GUEST_READY = (GUEST_DIR / "vmlinux").exists() and (GUEST_DIR / "rootfs-python.erofs").exists()
needs_guest = pytest.mark.skipif(not GUEST_READY,
                                 reason=f"no microVM guest images in {GUEST_DIR} (run `make guest`)")


def version_config(client, name, version):
    return client.get_function_configuration(FunctionName=name, Qualifier=version)


def wait_version_active(client, name, version, timeout):
    def ready():
        c = version_config(client, name, version)
        return c if c["State"] != "Pending" else None
    return wait_until(ready, timeout, 1.0, f"{name}:{version} leaves Pending")


# ---------------------------------------------------------------- tags

def test_isolation_tag_is_validated_and_shown(lam, fname):
    with pytest.raises(ClientError) as e:
        create_function(lam, fname, "py_echo", Tags={"flicker:isolation": "container"})
    assert client_error_code(e.value) == "InvalidParameterValueException"
    assert "sandbox or microvm" in str(e.value)
    create_function(lam, fname, "py_echo", Tags={"flicker:isolation": "sandbox", "team": "a"})
    try:
        got = lam.get_function(FunctionName=fname)
        assert got["Tags"]["flicker:isolation"] == "sandbox"
        arn = got["Configuration"]["FunctionArn"]
        # chosen at creation: neither re-tagging nor untagging may change it
        with pytest.raises(ClientError) as e:
            lam.tag_resource(Resource=arn, Tags={"flicker:isolation": "microvm"})
        assert client_error_code(e.value) == "InvalidParameterValueException"
        with pytest.raises(ClientError) as e:
            lam.untag_resource(Resource=arn, TagKeys=["flicker:isolation"])
        assert client_error_code(e.value) == "InvalidParameterValueException"
        assert lam.list_tags(Resource=arn)["Tags"]["flicker:isolation"] == "sandbox"
        lam.untag_resource(Resource=arn, TagKeys=["team"])  # other tags stay free
        assert do_invoke(lam, fname, {"x": 1}).status == 200
    finally:
        lam.delete_function(FunctionName=fname)


# ------------------------------------------------- SnapStart on sandboxes

def test_snapstart_on_sandbox_runs_hooks_without_snapshot(lam, deploy):
    name = deploy("py_snapstart", runtime="python3.11", SnapStart={"ApplyOn": "PublishedVersions"},
                  Tags={"flicker:isolation": "sandbox"})
    latest = lam.get_function_configuration(FunctionName=name)
    assert latest["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    v = lam.publish_version(FunctionName=name)
    assert v["State"] == "Active"
    # a sandbox cannot be snapshotted: flicker says so instead of claiming On
    assert v["SnapStart"]["OptimizationStatus"] == "Off"
    r = do_invoke(lam, name, {}, Qualifier=v["Version"]).json
    assert r["initialization_type"] == "snap-start"
    assert r["before_snapshot_calls"] == 1 and r["after_restore_calls"] == 1
    # $LATEST is never SnapStart (Lambda applies it to published versions only)
    r = do_invoke(lam, name, {}).json
    assert r["initialization_type"] == "on-demand"
    assert r["before_snapshot_calls"] == 0 and r["after_restore_calls"] == 0


# ------------------------------------------------- SnapStart on microVMs

@pytest.fixture
def vm_server(spawn):
    return spawn("--isolation", "microvm", "--keep-alive", "60")


@needs_guest
def test_snapstart_microvm_restores_unique_clones(vm_server):
    lam = vm_server.client(read_timeout=300)
    name = "snap-" + os.urandom(4).hex()
    create_function(lam, name, "py_snapstart", runtime="python3.11",
                    SnapStart={"ApplyOn": "PublishedVersions"})
    v = lam.publish_version(FunctionName=name)
    assert v["State"] == "Pending" and v["SnapStart"]["OptimizationStatus"] == "Off"
    # not invokable until the snapshot exists
    with pytest.raises(ClientError) as e:
        lam.invoke(FunctionName=name, Qualifier=v["Version"], Payload=b"{}")
    assert client_error_code(e.value) == "SnapStartNotReadyException"
    cfg = wait_version_active(lam, name, v["Version"], 240 * SLOW)
    assert cfg["State"] == "Active"
    assert cfg["SnapStart"]["OptimizationStatus"] == "On", vm_server.log_tail()

    # two environments at once: both restored from the one snapshot
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(2) as pool:
        futs = [pool.submit(do_invoke, vm_server.client(read_timeout=300), name, {},
                            Qualifier=v["Version"], LogType="Tail") for _ in range(2)]
        results = [f.result() for f in futs]
    bodies = [r.json for r in results]
    for r, b in zip(results, bodies):
        assert r.status == 200 and not r.function_error, r.payload
        assert "Restore Duration:" in r.log_tail and "Init Duration" not in r.log_tail, r.log_tail
        assert b["before_snapshot_calls"] == 1 and b["after_restore_calls"] == 1
    # same Init (one snapshot), different environments
    assert bodies[0]["init_id"] == bodies[1]["init_id"]
    assert bodies[0]["urandom"] != bodies[1]["urandom"]
    assert bodies[0]["boot_id"] != bodies[1]["boot_id"]
    # warm reuse of a restored environment
    again = do_invoke(lam, name, {}, Qualifier=v["Version"]).json
    assert again["count"] == 2 and again["init_id"] == bodies[0]["init_id"]


@needs_guest
def test_snapstart_damaged_snapshot_falls_back_to_init(vm_server):
    lam = vm_server.client(read_timeout=300)
    name = "snapbad-" + os.urandom(4).hex()
    create_function(lam, name, "py_snapstart", runtime="python3.11",
                    SnapStart={"ApplyOn": "PublishedVersions"})
    v = lam.publish_version(FunctionName=name)
    cfg = wait_version_active(lam, name, v["Version"], 240 * SLOW)
    assert cfg["SnapStart"]["OptimizationStatus"] == "On"
    snaps = list((vm_server.data / "snapshots" / name).glob("v*.vmstate"))
    assert len(snaps) == 1
    with open(snaps[0], "r+b") as f:  # garble it past the header
        f.seek(4096)
        f.write(os.urandom(65536))
    r = do_invoke(lam, name, {}, Qualifier=v["Version"], LogType="Tail")
    assert r.status == 200 and not r.function_error, r.payload
    assert "Init Duration" in r.log_tail, r.log_tail
    assert r.json["after_restore_calls"] == 1
    vm_server.wait_log(name, "SnapStart: restoring the snapshot failed")
    # deleting the version removes its snapshot
    lam.delete_function(FunctionName=name, Qualifier=v["Version"])
    wait_until(lambda: not snaps[0].exists(), 10, 0.2, "snapshot file removed")
