"""Allocates (and touches) memory until the sandbox's memory limit kills it."""

HOARD = []


def handler(event, context):
    step = 16 * 1024 * 1024
    # Bounded (2 GiB) so an unlimited sandbox fails the test without taking
    # the host's memory: a 128 MB function must be killed long before.
    limit = int((event or {}).get("limit_mb", 2048))
    while len(HOARD) * 16 < limit:
        b = bytearray(step)
        for i in range(0, step, 4096):
            b[i] = 1
        HOARD.append(b)
    return {"allocated_mb": len(HOARD) * 16}
