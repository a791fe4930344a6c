"""Prints a lot: event {"mb": N} megabytes of log lines (default 32)."""
import sys


def handler(event, context):
    mb = int((event or {}).get("mb", 32))
    line = ("flood " + "y" * 1017 + "\n")  # 1 KiB per line
    out = sys.stdout
    for i in range(mb * 1024):
        out.write(line)
    out.write("FLOOD DONE\n")
    out.flush()
    return {"lines": mb * 1024}
