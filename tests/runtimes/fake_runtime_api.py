"""A small in-process fake of the Lambda Runtime API (2018-06-01) for tests.

    api = FakeRuntimeAPI().start()
    rid = api.add_event({"k": "v"})            # queue an event
    proc = subprocess.Popen(..., env={"AWS_LAMBDA_RUNTIME_API": api.address})
    res = api.wait_result(rid)                 # {"kind": "response"|"error", ...}
    api.stop()

GET /runtime/invocation/next blocks until an event is queued (like the real
one).  Responses, invocation errors and init errors are recorded with their
headers.  It speaks HTTP/1.1 keep-alive and counts connections so tests can
check that a client reuses one.

Run as a script to serve a fixed list of events on a port for manual tests:
    python3 fake_runtime_api.py --port 9001 '{"a":1}' '"second"'
"""

import http.server
import json
import queue
import threading
import time
import uuid

MAX_RESPONSE = 6 * 1024 * 1024
PREFIX = "/2018-06-01"


class Event(object):
    def __init__(self, body, request_id, deadline_ms, headers):
        self.body = body
        self.request_id = request_id
        self.deadline_ms = deadline_ms
        self.headers = headers


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # keep test output quiet
        pass

    def setup(self):
        http.server.BaseHTTPRequestHandler.setup(self)
        api = self.server.api
        with api.lock:
            api.connections += 1

    def _close_if_asked(self):
        if self.server.api.silent_close:
            # Drop the connection after this exchange without saying so, like
            # a server timing out an idle keep-alive connection.
            self.close_connection = True
        if self.server.api.close_connections:
            self.send_header("Connection", "close")
            self.close_connection = True

    def _send(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self._close_if_asked()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        api = self.server.api
        if self.path != PREFIX + "/runtime/invocation/next":
            return self._send(404, {"errorType": "NotFound"})
        with api.lock:
            api.next_calls += 1
        while True:
            if api.stopping.is_set():
                self.close_connection = True
                return self._send(500, {"errorType": "ShuttingDown"})
            try:
                ev = api.events.get(timeout=0.05)
                break
            except queue.Empty:
                continue
        with api.lock:
            api.pending.add(ev.request_id)
            api.served.append(ev.request_id)
        data = ev.body
        self.send_response(200)
        self._close_if_asked()
        self.send_header("Content-Type",
                         ev.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Lambda-Runtime-Aws-Request-Id", ev.request_id)
        self.send_header("Lambda-Runtime-Deadline-Ms", str(ev.deadline_ms))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn",
                         api.function_arn)
        for k, v in ev.headers.items():
            if k != "Content-Type":
                self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        api = self.server.api
        body = self._body()
        path = self.path
        headers = dict(self.headers.items())
        if path == PREFIX + "/runtime/init/error":
            with api.lock:
                api.init_errors.append({"headers": headers, "body": body})
                api.cond.notify_all()
            return self._send(202, {"status": "OK"})
        parts = path[len(PREFIX):].split("/") if path.startswith(PREFIX) else []
        # ['', 'runtime', 'invocation', id, kind]
        if len(parts) != 5 or parts[1:3] != ["runtime", "invocation"] or \
                parts[4] not in ("response", "error"):
            return self._send(404, {"errorType": "NotFound"})
        rid, kind = parts[3], parts[4]
        with api.lock:
            if rid not in api.pending:
                return self._send(400, {"errorType": "InvalidRequestID"})
            if kind == "response" and api.response_status is not None:
                status = api.response_status
                api.pending.discard(rid)
                api.results[rid] = {"kind": "rejected", "status": status,
                                    "headers": headers, "body": body}
                api.cond.notify_all()
                return self._send(status, {"errorType": "Rejected"})
            if kind == "response" and len(body) > MAX_RESPONSE:
                api.pending.discard(rid)
                api.results[rid] = {"kind": "too_large", "headers": headers,
                                    "body": body}
                api.cond.notify_all()
                return self._send(413, {"errorType": "RequestEntityTooLarge"})
            api.pending.discard(rid)
            api.results[rid] = {"kind": kind, "headers": headers, "body": body,
                                "time": time.time()}
            api.cond.notify_all()
        return self._send(202, {"status": "OK"})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client process killed or exiting mid-connection is expected here.
        import sys
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        http.server.ThreadingHTTPServer.handle_error(self, request,
                                                     client_address)


class FakeRuntimeAPI(object):
    def __init__(self, port=0, function_arn=None):
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.events = queue.Queue()
        self.pending = set()
        self.served = []
        self.results = {}
        self.init_errors = []
        self.connections = 0
        self.next_calls = 0
        self.response_status = None  # set e.g. to 500 to reject responses
        self.close_connections = False  # answer "Connection: close" each time
        self.silent_close = False  # close after each answer, no header
        self.stopping = threading.Event()
        self.function_arn = function_arn or \
            "arn:aws:lambda:us-east-1:123456789012:function:fn"
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.api = self
        self.thread = None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.server.server_address[1]

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()

    def add_event(self, payload=None, raw=None, request_id=None,
                  timeout_ms=3000, deadline_ms=None, headers=None):
        """Queue an event; payload is JSON-encoded unless raw bytes given."""
        if raw is None:
            raw = json.dumps(payload if payload is not None else {}).encode()
        elif isinstance(raw, str):
            raw = raw.encode()
        rid = request_id or str(uuid.uuid4())
        if deadline_ms is None:
            deadline_ms = int(time.time() * 1000) + timeout_ms
        self.events.put(Event(raw, rid, deadline_ms, headers or {}))
        return rid

    def wait_result(self, request_id, timeout=10.0):
        end = time.time() + timeout
        with self.cond:
            while request_id not in self.results:
                left = end - time.time()
                if left <= 0:
                    raise TimeoutError("no result for %s" % request_id)
                self.cond.wait(left)
            return self.results[request_id]

    def wait_init_error(self, timeout=10.0):
        end = time.time() + timeout
        with self.cond:
            while not self.init_errors:
                left = end - time.time()
                if left <= 0:
                    raise TimeoutError("no init error")
                self.cond.wait(left)
            return self.init_errors[0]

    def wait_next_calls(self, n, timeout=10.0):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if self.next_calls >= n:
                    return True
            time.sleep(0.02)
        return False


def _main():
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("events", nargs="*", help="raw JSON event bodies")
    args = ap.parse_args()
    api = FakeRuntimeAPI(port=args.port).start()
    rids = [api.add_event(raw=e) for e in args.events]
    print("listening on", api.address, flush=True)
    try:
        for rid in rids:
            res = api.wait_result(rid, timeout=3600)
            print(rid, res["kind"], res["body"].decode("utf-8", "replace"),
                  flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("init errors:", [e["body"] for e in api.init_errors])
        api.stop()


if __name__ == "__main__":
    _main()
