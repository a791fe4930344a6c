"""Server lifecycle: persistence across restart, clean shutdown that leaves
nothing behind, recovery after kill -9.  Each test runs its own server."""
import os
import signal


from harness import (SLOW, create_function, do_invoke, host_mounts, is_role_process, pid_alive,
                     sandbox_cgroup_dirs, sandbox_pids, wait_until, SANITIZER_PATTERNS)


def test_restart_persistence(spawn):
    srv = spawn()
    c = srv.client()
    create_function(c, "persist-fn", "py_echo", Environment={"Variables": {"MARK": "one"}},
                    Tags={"k": "v"})
    c.publish_version(FunctionName="persist-fn")
    c.create_alias(FunctionName="persist-fn", Name="live", FunctionVersion="1")
    c.put_function_concurrency(FunctionName="persist-fn", ReservedConcurrentExecutions=7)
    c.update_function_configuration(FunctionName="persist-fn",
                                    Environment={"Variables": {"MARK": "two"}})
    c.get_waiter("function_updated_v2").wait(FunctionName="persist-fn",
                                             WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    before = c.get_function(FunctionName="persist-fn")
    assert do_invoke(c, "persist-fn:live", {}).json["env"]["MARK"] == "one"

    srv.restart()
    c = srv.client()
    after = c.get_function(FunctionName="persist-fn")
    for k in ("CodeSha256", "RevisionId", "LastModified", "Environment", "FunctionArn"):
        assert after["Configuration"][k] == before["Configuration"][k], k
    assert after.get("Tags") == {"k": "v"}
    assert after["Concurrency"]["ReservedConcurrentExecutions"] == 7
    assert [v["Version"] for v in c.list_versions_by_function(FunctionName="persist-fn")["Versions"]] \
        == ["$LATEST", "1"]
    assert c.get_alias(FunctionName="persist-fn", Name="live")["FunctionVersion"] == "1"
    r = do_invoke(c, "persist-fn:live", {})
    assert r.executed_version == "1" and r.json["env"]["MARK"] == "one"
    assert do_invoke(c, "persist-fn", {}).json["env"]["MARK"] == "two"
    # The next version number continues after the persisted ones.
    assert c.publish_version(FunctionName="persist-fn")["Version"] == "2"


def test_clean_shutdown_leaves_nothing(spawn):
    cg_before = sandbox_cgroup_dirs()
    mounts_before = host_mounts()
    srv = spawn()
    c = srv.client()
    for i, src in enumerate(["py_echo", "node_echo", "provided_echo"]):
        create_function(c, f"shut-{i}", src)
        assert do_invoke(c, f"shut-{i}", {}).function_error is None
    procs = srv.descendants() | sandbox_pids(sandbox_cgroup_dirs() - cg_before)
    assert procs, "no sandbox process under the server after 3 invokes (are they warm?)"
    rc = srv.stop(signal.SIGTERM)
    assert rc == 0, f"exit status {rc} on SIGTERM"
    left = [p for p in procs if pid_alive(p)]
    assert not left, f"processes survived shutdown: {left}"
    cg_left = sandbox_cgroup_dirs() - cg_before
    assert not cg_left, f"sandbox cgroups left: {cg_left}"
    new_mounts = host_mounts() - mounts_before
    assert not new_mounts, f"mounts left on the host: {new_mounts}"


def test_sigint_is_clean_too(spawn):
    srv = spawn()
    c = srv.client()
    create_function(c, "int-fn", "py_echo")
    do_invoke(c, "int-fn", {})
    procs = srv.descendants()
    assert srv.stop(signal.SIGINT) == 0
    assert not [p for p in procs if pid_alive(p)]


def test_shutdown_during_invoke(spawn):
    """SIGTERM while an invoke is in flight: the server still exits 0 in
    time and nothing survives."""
    import threading
    srv = spawn()
    c = srv.client()
    create_function(c, "busy-fn", "py_echo", Timeout=120)
    t = threading.Thread(target=lambda: _quiet(lambda: do_invoke(srv.new_client(), "busy-fn",
                                                                 {"sleep": 60, "marker": "busy"})),
                         daemon=True)
    t.start()
    srv.wait_log("busy-fn", "STARTED busy")
    procs = srv.descendants()
    assert srv.stop(signal.SIGTERM) == 0
    assert not [p for p in procs if pid_alive(p)]


def _quiet(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 - the connection is expected to drop
        pass


def test_kill9_then_restart_recovers(spawn):
    cg_before = sandbox_cgroup_dirs()
    srv = spawn()
    c = srv.client()
    create_function(c, "k9-fn", "py_echo")
    create_function(c, "k9-node", "node_echo")
    first = do_invoke(c, "k9-fn", {"write_tmp": "x"}).json
    do_invoke(c, "k9-node", {})
    cg_run1 = sandbox_cgroup_dirs() - cg_before
    procs = srv.descendants() | sandbox_pids(cg_run1)
    assert procs
    srv.kill9()
    # Restart on the same data dir: leftovers of the first run are cleaned.
    srv.start()
    wait_until(lambda: not [p for p in procs if pid_alive(p)], 30 * SLOW, 0.5,
               "sandbox processes of the killed server to be gone")
    wait_until(lambda: not (cg_run1 & sandbox_cgroup_dirs()), 30 * SLOW, 0.5,
               "cgroups of the killed server to be removed")
    c = srv.client()
    assert c.get_function(FunctionName="k9-fn")["Configuration"]["State"] == "Active"
    again = do_invoke(c, "k9-fn", {}).json
    assert again["env_id"] != first["env_id"], "an environment survived kill -9 and was reused"
    assert do_invoke(c, "k9-node", {}).function_error is None
    # And this run shuts down cleanly (checked by the spawn fixture: exit 0).


def test_data_dir_survives_kill9_during_writes(spawn):
    """kill -9 right after a burst of control-plane writes: every
    acknowledged write is there after restart (the store is durable)."""
    srv = spawn()
    c = srv.client()
    acked = []
    for i in range(8):
        create_function(c, f"dur-{i}", "py_echo", wait=False)
        acked.append(f"dur-{i}")
    srv.kill9()
    srv.start()
    c = srv.client()
    names = {f["FunctionName"] for f in c.get_paginator("list_functions").paginate()
             .build_full_result()["Functions"]}
    assert set(acked) <= names


def test_second_instance_on_busy_port_fails(flicker, spawn):
    srv = spawn(start=False)
    srv.port = flicker.port
    import subprocess
    from harness import BINARY
    p = subprocess.run([str(BINARY), "up", "--listen", f"127.0.0.1:{flicker.port}", "--data",
                        str(srv.data)], capture_output=True, text=True, timeout=60 * SLOW,
                       env={**os.environ, "FLICKER_ACCESS_KEY_ID": "AKIAFLICKERTEST00001",
                            "FLICKER_SECRET_ACCESS_KEY": "x"})
    assert p.returncode != 0
    assert not [x for x in SANITIZER_PATTERNS if x in p.stderr + p.stdout], p.stderr
    assert flicker.health() == 200


def test_keep_alive_expiry(spawn):
    """--keep-alive 2: an idle environment is destroyed after ~2 s, and the
    next invoke is a cold start (new environment, Init Duration)."""
    cg_before = sandbox_cgroup_dirs()
    srv = spawn(keep_alive=2)
    c = srv.client()
    create_function(c, "ka-fn", "py_echo")
    first = do_invoke(c, "ka-fn", {}).json
    procs = {p for p in srv.descendants() if not is_role_process(p)}
    procs |= sandbox_pids(sandbox_cgroup_dirs() - cg_before)
    assert procs, "no sandbox process found after an invoke"
    wait_until(lambda: not [p for p in procs if pid_alive(p)], 60 * SLOW, 0.5,
               "the idle environment to be destroyed after its keep-alive")
    r = do_invoke(c, "ka-fn", {}, LogType="Tail")
    assert r.json["env_id"] != first["env_id"]
    assert "Init Duration:" in r.log_tail, r.log_tail


def test_keep_alive_keeps_warm(spawn):
    srv = spawn(keep_alive=300)
    c = srv.client()
    create_function(c, "warm-fn", "py_echo")
    ids = {do_invoke(c, "warm-fn", {}).json["env_id"] for _ in range(5)}
    assert len(ids) == 1, ids
