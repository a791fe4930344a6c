"""Round trips with the AWS CLI v2 (/usr/bin/aws, 2.9.x): it sends the
2.9-era trailing-slash paths and signs with its own botocore."""
import base64
import json
import uuid

from harness import ROLE, make_zip


def test_cli_round_trip(flicker, aws, tmp_path):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    zpath = tmp_path / "fn.zip"
    zpath.write_bytes(make_zip("py_echo"))
    out = json.loads(aws("lambda", "create-function", "--function-name", name,
                         "--runtime", "python3.11", "--handler", "app.handler",
                         "--role", ROLE, "--zip-file", f"fileb://{zpath}",
                         "--environment", "Variables={FROM_CLI=yes}").stdout)
    try:
        assert out["FunctionName"] == name
        assert out["CodeSize"] == zpath.stat().st_size
        aws("lambda", "wait", "function-active-v2", "--function-name", name)
        got = json.loads(aws("lambda", "get-function", "--function-name", name).stdout)
        assert got["Configuration"]["State"] == "Active"

        resp_file = tmp_path / "out.json"
        p = aws("lambda", "invoke", "--function-name", name,
                "--cli-binary-format", "raw-in-base64-out",
                "--payload", json.dumps({"via": "cli"}), str(resp_file))
        meta = json.loads(p.stdout)
        assert meta["StatusCode"] == 200
        assert meta["ExecutedVersion"] == "$LATEST"
        assert "FunctionError" not in meta
        body = json.loads(resp_file.read_text())
        assert body["event"] == {"via": "cli"}
        assert body["env"]["FROM_CLI"] == "yes"

        names = [f["FunctionName"] for f in
                 json.loads(aws("lambda", "list-functions").stdout)["Functions"]]
        assert name in names

        aws("lambda", "update-function-configuration", "--function-name", name, "--timeout", "9")
        aws("lambda", "wait", "function-updated-v2", "--function-name", name)
        cfg = json.loads(aws("lambda", "get-function-configuration", "--function-name", name).stdout)
        assert cfg["Timeout"] == 9

        v = json.loads(aws("lambda", "publish-version", "--function-name", name).stdout)
        assert v["Version"] == "1"
        aws("lambda", "create-alias", "--function-name", name, "--name", "prod",
            "--function-version", "1")
        p = aws("lambda", "invoke", "--function-name", f"{name}:prod",
                "--cli-binary-format", "raw-in-base64-out", "--payload", "{}",
                "--log-type", "Tail", str(resp_file))
        meta = json.loads(p.stdout)
        assert meta["ExecutedVersion"] == "1"
        tail = base64.b64decode(meta["LogResult"]).decode()
        assert "START RequestId:" in tail and "REPORT RequestId:" in tail

        settings = json.loads(aws("lambda", "get-account-settings").stdout)
        assert settings["AccountLimit"]["ConcurrentExecutions"] >= 1
    finally:
        aws("lambda", "delete-function", "--function-name", name, check=False)
    p = aws("lambda", "get-function", "--function-name", name, check=False)
    assert p.returncode != 0
    assert "ResourceNotFoundException" in p.stderr


def test_cli_error_surface(aws):
    p = aws("lambda", "get-function", "--function-name", f"nope-{uuid.uuid4().hex[:6]}",
            check=False)
    assert p.returncode == 254
    assert "ResourceNotFoundException" in p.stderr


def test_cli_function_error(flicker, aws, deploy, tmp_path):
    name = deploy("py_error")
    out = tmp_path / "err.json"
    p = aws("lambda", "invoke", "--function-name", name, str(out))
    meta = json.loads(p.stdout)
    assert meta["StatusCode"] == 200
    assert meta["FunctionError"] == "Unhandled"
    assert json.loads(out.read_text())["errorType"] == "CustomError"


def test_cli_provided_runtime(aws, tmp_path):
    name = f"cli-prov-{uuid.uuid4().hex[:8]}"
    zpath = tmp_path / "prov.zip"
    zpath.write_bytes(make_zip("provided_echo"))
    aws("lambda", "create-function", "--function-name", name, "--runtime", "provided.al2023",
        "--handler", "h", "--role", ROLE, "--zip-file", f"fileb://{zpath}")
    try:
        aws("lambda", "wait", "function-active-v2", "--function-name", name)
        out = tmp_path / "o.json"
        aws("lambda", "invoke", "--function-name", name, "--cli-binary-format",
            "raw-in-base64-out", "--payload", '{"p": 1}', str(out))
        assert json.loads(out.read_text())["echo"] == {"p": 1}
    finally:
        aws("lambda", "delete-function", "--function-name", name, check=False)
