"""flicker's own CLI (build/flicker deploy/invoke/list/logs/delete/status),
with FLICKER_ENDPOINT and FLICKER_* credentials in the environment.

Assumed syntax (docs/testing.md):
  flicker deploy NAME PATH --runtime RT [--handler H] [--memory MB] [--timeout S]
      PATH is a directory (zipped by the CLI) or a .zip; creates or updates.
  flicker invoke NAME [PAYLOAD]       prints the response body on stdout;
                                      exit 0, or non-zero on a function error.
  flicker list                        one function per line (name first).
  flicker logs NAME                   the function's log.
  flicker delete NAME
  flicker status                      the platform's status (JSON).
"""
import json
import uuid

import pytest

from harness import FUNCTIONS, make_zip


@pytest.fixture
def cli_name(lam):
    name = f"fcli-{uuid.uuid4().hex[:8]}"
    yield name
    try:
        lam.delete_function(FunctionName=name)
    except Exception:
        pass


def test_deploy_invoke_list_delete(flicker, lam, cli_name):
    flicker.cli("deploy", cli_name, FUNCTIONS / "py_echo", "--runtime", "python3.11",
                "--handler", "app.handler", "--memory", "256", "--timeout", "10")
    cfg = lam.get_function_configuration(FunctionName=cli_name)
    assert cfg["Runtime"] == "python3.11"
    assert cfg["MemorySize"] == 256 and cfg["Timeout"] == 10
    lam.get_waiter("function_active_v2").wait(FunctionName=cli_name,
                                              WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    p = flicker.cli("invoke", cli_name, json.dumps({"from": "flicker-cli"}))
    body = json.loads(p.stdout)
    assert body["event"] == {"from": "flicker-cli"}

    p = flicker.cli("list")
    assert cli_name in p.stdout

    p = flicker.cli("logs", cli_name)
    assert "START RequestId:" in p.stdout and "REPORT RequestId:" in p.stdout

    flicker.cli("delete", cli_name)
    names = [f["FunctionName"] for f in lam.get_paginator("list_functions").paginate()
             .build_full_result()["Functions"]]
    assert cli_name not in names


def test_deploy_zip_and_redeploy_updates(flicker, lam, cli_name, tmp_path):
    z1 = tmp_path / "v1.zip"
    z1.write_bytes(make_zip("py_echo", extra={"marker.txt": "one"}))
    flicker.cli("deploy", cli_name, z1, "--runtime", "python3.11", "--handler", "app.handler")
    lam.get_waiter("function_active_v2").wait(FunctionName=cli_name,
                                              WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert json.loads(flicker.cli("invoke", cli_name, "{}").stdout)["code_marker"] == "one"
    z2 = tmp_path / "v2.zip"
    z2.write_bytes(make_zip("py_echo", extra={"marker.txt": "two"}))
    flicker.cli("deploy", cli_name, z2, "--runtime", "python3.11", "--handler", "app.handler")
    lam.get_waiter("function_updated_v2").wait(FunctionName=cli_name,
                                               WaiterConfig={"Delay": 1, "MaxAttempts": 60})
    assert json.loads(flicker.cli("invoke", cli_name, "{}").stdout)["code_marker"] == "two"


def test_invoke_function_error_exit_status(flicker, deploy):
    name = deploy("py_error")
    p = flicker.cli("invoke", name, "{}", check=False)
    assert p.returncode != 0
    assert "CustomError" in p.stdout + p.stderr


def test_status(flicker):
    p = flicker.cli("status")
    assert "0." in p.stdout or "version" in p.stdout


def test_cli_wrong_credentials(flicker):
    import subprocess
    from harness import BINARY
    env = flicker.cli_env()
    env["FLICKER_SECRET_ACCESS_KEY"] = "wrong"
    env["AWS_SECRET_ACCESS_KEY"] = "wrong"
    p = subprocess.run([str(BINARY), "list"], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    assert "InvalidSignatureException" in p.stdout + p.stderr


def test_unknown_command(flicker):
    p = flicker.cli("no-such-command", check=False)
    assert p.returncode == 2
