"""Fails at import time: Runtime.ImportModuleError."""
import flicker_no_such_module_xyz  # noqa: F401


def handler(event, context):
    return "unreachable"
