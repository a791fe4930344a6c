"""Sleeps longer than its Timeout."""
import time


def handler(event, context):
    print("py_timeout sleeping", flush=True)
    time.sleep(float((event or {}).get("seconds", 60)))
    return "woke up"
