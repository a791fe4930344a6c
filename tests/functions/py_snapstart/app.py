"""SnapStart probe: records what Init and the SnapStart hooks saw, and what
makes this execution environment unique.

Returns: init_id (random, drawn once at Init: shared by clones of one
snapshot), after_restore_calls (how often the after-restore hook ran in
this environment), before_snapshot_calls, urandom (fresh bytes from the
kernel), boot_id, initialization_type, count (invokes in this environment).
"""
import os
import uuid

from snapshot_restore_py import register_after_restore, register_before_snapshot

INIT_ID = uuid.uuid4().hex
STATE = {"before": 0, "after": 0, "count": 0}


@register_before_snapshot
def before():
    STATE["before"] += 1


@register_after_restore
def after():
    STATE["after"] += 1


def _boot_id():
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError as e:
        return "unreadable: %s" % e


def handler(event, context):
    STATE["count"] += 1
    return {
        "init_id": INIT_ID,
        "before_snapshot_calls": STATE["before"],
        "after_restore_calls": STATE["after"],
        "urandom": os.urandom(16).hex(),
        "boot_id": _boot_id(),
        "initialization_type": os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE"),
        "count": STATE["count"],
    }
