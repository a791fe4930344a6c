"""/tmp behaviour.  Event:
  {"op": "write", "data": "..."}   write /tmp/marker
  {"op": "read"}                   read it back (null if absent)
  {"op": "fill", "max_mb": N}      write /tmp/fill until an error or N MiB;
                                   reports the MiB written and the error
"""
import os


def handler(event, context):
    op = event.get("op")
    if op == "write":
        with open("/tmp/marker", "w") as f:
            f.write(event["data"])
        return {"ok": True}
    if op == "read":
        try:
            with open("/tmp/marker") as f:
                return {"data": f.read()}
        except OSError:
            return {"data": None}
    if op == "fill":
        chunk = b"\xa5" * (1024 * 1024)
        written = 0
        error = None
        try:
            with open("/tmp/fill", "wb") as f:
                while written < int(event.get("max_mb", 2048)):
                    f.write(chunk)
                    f.flush()
                    written += 1
                os.fsync(f.fileno())
        except OSError as e:
            error = f"{type(e).__name__}: errno {e.errno}"
        try:
            os.unlink("/tmp/fill")
        except OSError:
            pass
        return {"written_mb": written, "error": error}
    return {"error": "unknown op"}
