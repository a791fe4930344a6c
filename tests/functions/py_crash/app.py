"""Exits the runtime process mid-invoke: Runtime.ExitError, exit status 1."""
import os


def handler(event, context):
    print("py_crash exiting", flush=True)
    os._exit(1)
