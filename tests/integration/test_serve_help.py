"""`flicker serve ROLE --help` prints that role's own usage.

Each role process (frontend, assignment, placement, worker) parses its own
flags; `--help` must print the usage of that role on stdout and exit 0 (not
the usage of `flicker up`, which a lone frontend once printed, nor a usage
error, which the assignment once answered), and name only flags the role
accepts.  `flicker serve --help` lists the roles.  No server is started.
"""
import re
import subprocess

import pytest

from harness import BINARY, SANITIZER_PATTERNS

# Flags each role must document (a subset: the ones that make it work).
ROLE_FLAGS = {
    "frontend": ["--assignment", "--listen", "--data", "--placement", "--store"],
    "assignment": ["--listen", "--journal", "--placement", "--lease-ms"],
    "placement": ["--listen", "--heartbeat-timeout-ms", "--provider"],
    "worker": ["--listen", "--placement", "--zone", "--data", "--store"],
}


def run(*args):
    p = subprocess.run([str(BINARY), *args], capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL)
    for stream in (p.stdout, p.stderr):
        assert not any(x in stream for x in SANITIZER_PATTERNS), stream
    return p


@pytest.mark.parametrize("role", sorted(ROLE_FLAGS))
def test_serve_role_help(role):
    p = run("serve", role, "--help")
    assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
    first = p.stdout.splitlines()[0] if p.stdout else ""
    assert first.startswith(f"usage: flicker serve {role}"), p.stdout
    assert "flicker up" not in p.stdout, p.stdout
    for flag in ROLE_FLAGS[role]:
        assert flag in p.stdout, f"{role} --help does not mention {flag}:\n{p.stdout}"


def test_frontend_help_lists_only_its_flags():
    """The frontend does not run environments: the flags of `flicker up`
    that a lone frontend ignores are not offered."""
    out = run("serve", "frontend", "--help").stdout
    flags = set(re.findall(r"^\s+(--[a-z-]+)", out, re.M))
    assert not flags & {"--keep-alive", "--workers", "--embedded", "--split"}, flags


def test_serve_help_lists_roles():
    p = run("serve", "--help")
    assert p.returncode == 0, p.stderr
    for role in ROLE_FLAGS:
        assert role in p.stdout
    p = run("serve")
    assert p.returncode == 2 and "usage: flicker serve" in p.stderr


@pytest.mark.parametrize("role", sorted(ROLE_FLAGS))
def test_serve_role_bad_flag(role):
    p = run("serve", role, "--no-such-flag", "x")
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"flicker serve {role}" in p.stderr, p.stderr
