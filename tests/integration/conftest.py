"""pytest entry point: the fixtures and hooks live in harness.py (importable
by the tests as `from harness import ...` without clashing with another
directory's conftest)."""
from harness import *  # noqa: F401,F403 - fixtures and hooks are found by name
from harness import _sanitizer_gate  # noqa: F401
