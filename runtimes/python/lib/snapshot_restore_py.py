"""SnapStart runtime hooks for flicker's Python runtime (the names Lambda's
Python runtime offers).

    from snapshot_restore_py import register_before_snapshot, register_after_restore

    @register_after_restore
    def reseed():
        random.seed()

Before-snapshot hooks run once after Init, before the environment's
snapshot is taken, in reverse order of registration; after-restore hooks
run in every environment restored from that snapshot (and in one started
with a full Init when no snapshot could be used), in registration order,
before it receives its first event.  A hook that raises fails the
snapshot (before) or the environment (after) with a Runtime error.
"""

_before = []
_after = []


def register_before_snapshot(func, *args, **kwargs):
    """Registers func(*args, **kwargs) to run before the snapshot; returns func."""
    _before.append((func, args, kwargs))
    return func


def register_after_restore(func, *args, **kwargs):
    """Registers func(*args, **kwargs) to run after each restore; returns func."""
    _after.append((func, args, kwargs))
    return func


def get_before_snapshot():
    return list(_before)


def get_after_restore():
    return list(_after)


def _run_before_snapshot():
    for func, args, kwargs in reversed(_before):
        func(*args, **kwargs)


def _run_after_restore():
    for func, args, kwargs in _after:
        func(*args, **kwargs)
