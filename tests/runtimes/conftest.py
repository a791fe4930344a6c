"""Shared fixtures for the runtime interface client tests.

Each test gets a fresh FakeRuntimeAPI and a temp task root; `ric.start()`
launches the client under test as a subprocess pointed at both.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from fake_runtime_api import FakeRuntimeAPI  # noqa: E402

REPO = os.path.dirname(os.path.dirname(HERE))
RUNTIME_DIR = os.path.join(REPO, "runtimes")
# RIC_PYTHON / RIC_NODE: try the clients under other interpreters.
PYTHON = os.environ.get("RIC_PYTHON", "/usr/bin/python3")
NODE = os.environ.get("RIC_NODE", "/usr/bin/node")


class Ric(object):
    def __init__(self, api, task_root, argv, exec_env):
        self.api = api
        self.task_root = task_root
        self.argv = argv
        self.exec_env = exec_env
        self.procs = []

    def write(self, relpath, text):
        path = os.path.join(self.task_root, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def env(self, handler, extra=None):
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "AWS_LAMBDA_RUNTIME_API": self.api.address,
            "_HANDLER": handler,
            "LAMBDA_TASK_ROOT": self.task_root,
            "LAMBDA_RUNTIME_DIR": RUNTIME_DIR,
            "AWS_LAMBDA_FUNCTION_NAME": "fn",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
            "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/fn",
            "AWS_LAMBDA_LOG_STREAM_NAME": "2026/12/07/[$LATEST]abc",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EXECUTION_ENV": self.exec_env,
        }
        env.update(extra or {})
        return env

    def start(self, handler, extra_env=None):
        proc = subprocess.Popen(self.argv, env=self.env(handler, extra_env),
                                cwd="/", stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        self.procs.append(proc)
        return proc

    def finish(self, proc, timeout=10):
        """Wait for an exiting process; return (rc, stdout, stderr) as text."""
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out.decode("utf-8", "replace"), \
            err.decode("utf-8", "replace")

    def stop(self, proc):
        """Kill a process that is parked in GET next; return its output."""
        if proc.poll() is None:
            proc.kill()
        out, err = proc.communicate(timeout=10)
        return out.decode("utf-8", "replace"), err.decode("utf-8", "replace")

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.communicate()


def _ric(tmp_path, argv, exec_env):
    api = FakeRuntimeAPI().start()
    task = tmp_path / "task"
    task.mkdir()
    r = Ric(api, str(task), argv, exec_env)
    try:
        yield r
    finally:
        r.close()
        api.stop()


@pytest.fixture
def pyric(tmp_path):
    yield from _ric(tmp_path,
                    [PYTHON, "-u", os.path.join(RUNTIME_DIR, "python",
                                                "bootstrap.py")],
                    "AWS_Lambda_python3.12")


@pytest.fixture
def noderic(tmp_path):
    if not os.path.exists(NODE):
        pytest.skip("no /usr/bin/node")
    yield from _ric(tmp_path,
                    [NODE, os.path.join(RUNTIME_DIR, "nodejs", "bootstrap.js")],
                    "AWS_Lambda_nodejs20.x")
