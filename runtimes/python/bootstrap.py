"""flicker's Lambda runtime interface client for Python.

Started by the worker inside the sandbox as

    /usr/bin/python3 -u /var/runtime/python/bootstrap.py

It loads the handler named by $_HANDLER from $LAMBDA_TASK_ROOT, then loops on
the Runtime API at $AWS_LAMBDA_RUNTIME_API: GET the next event, call the
handler, POST the result or the error.  Only the standard library is used and
the code keeps to Python 3.9 syntax.

The observable behaviour (error bodies, error types and messages, log line
formats, context object) follows AWS's Python runtime; see docs/runtimes.md.
"""

import decimal
import http.client
import importlib
import json
import logging
import os
import sys
import time
import traceback

API_PREFIX = "/2018-06-01"
ERROR_TYPE_HEADER = "Lambda-Runtime-Function-Error-Type"
XRAY_CAUSE_HEADER = "Lambda-Runtime-Function-XRay-Error-Cause"
XRAY_CAUSE_MAX = 64 * 1024

# Error log lines are joined with CR so that a multi-line error stays one log
# record for a line-oriented log collector (AWS does the same); leading spaces
# of traceback lines become NO-BREAK SPACE for the same reason.
ERROR_LOG_LINE_TERMINATE = "\r"
ERROR_LOG_IDENT = "\u00a0"

JSON_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_THIS_FILE = os.path.abspath(__file__)
_CURRENT_REQUEST_ID = None


class Fault(Exception):
    """A runtime-detected failure with a Lambda error type (Runtime.*)."""

    def __init__(self, error_type, msg, trace=None):
        Exception.__init__(self, msg)
        self.error_type = error_type
        self.msg = msg
        self.trace = trace


# ---------------------------------------------------------------- logging

def _write_stdout(text):
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except Exception:
        pass


def _indent_nbsp(line):
    stripped = line.lstrip(" ")
    return ERROR_LOG_IDENT * (len(line) - len(stripped)) + stripped


def _json_logs():
    return os.environ.get("AWS_LAMBDA_LOG_FORMAT", "").upper() == "JSON"


def log_error(error):
    """Print an error result the way Lambda's Python runtime does."""
    if _json_logs():
        rec = {"timestamp": time.strftime(JSON_TIME_FORMAT, time.gmtime()),
               "log_level": "ERROR"}
        rec.update(error)
        _write_stdout(json.dumps(rec, ensure_ascii=False) + "\n")
        return
    desc = "[ERROR]"
    etype = error.get("errorType")
    emsg = error.get("errorMessage")
    if etype:
        desc += " " + etype
    if emsg:
        if etype:
            desc += ":"
        desc += " " + emsg
    lines = [desc]
    trace = error.get("stackTrace")
    if trace is not None:
        lines.append("Traceback (most recent call last):")
        for element in trace:
            if element == "":
                lines.append("")
                continue
            for tl in element.splitlines():
                lines.append(_indent_nbsp(tl))
    _write_stdout(ERROR_LOG_LINE_TERMINATE.join(lines) + "\n")


class _LambdaLogHandler(logging.Handler):
    def emit(self, record):
        try:
            _write_stdout(self.format(record))
        except Exception:
            self.handleError(record)


class _RequestIdFilter(logging.Filter):
    def filter(self, record):
        record.aws_request_id = _CURRENT_REQUEST_ID or ""
        return True


# LogRecord attributes that are not user "extra" fields.
_RECORD_ATTRS = frozenset(logging.LogRecord(
    "", 0, "", 0, "", (), None).__dict__) | {"message", "asctime",
                                              "aws_request_id", "taskName"}
_JSON_LEVELS = {"WARNING": "WARN", "CRITICAL": "FATAL"}


class _JsonFormatter(logging.Formatter):
    """One JSON object per record, with the fields AWS's JSON format has."""

    def format(self, record):
        rec = {
            "timestamp": time.strftime(JSON_TIME_FORMAT,
                                       time.gmtime(record.created)),
            "level": _JSON_LEVELS.get(record.levelname, record.levelname),
            "message": record.getMessage(),
            "logger": record.name,
            "requestId": getattr(record, "aws_request_id", None) or None,
            "location": "{}:{}:{}".format(record.pathname, record.funcName,
                                          record.lineno),
        }
        if record.exc_info and record.exc_info[1] is not None:
            etype, value, tb = record.exc_info
            rec["errorType"] = etype.__name__
            rec["errorMessage"] = str(value)
            rec["stackTrace"] = traceback.format_tb(tb)
        for k, v in record.__dict__.items():
            if k not in _RECORD_ATTRS and k not in rec:
                rec[k] = v
        rec = dict((k, v) for k, v in rec.items() if v is not None)
        return json.dumps(rec, default=str, ensure_ascii=False) + "\n"


def setup_logging():
    logging.Formatter.converter = time.gmtime
    handler = _LambdaLogHandler()
    if _json_logs():
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            "[%(levelname)s]\t%(asctime)s.%(msecs)03dZ\t%(aws_request_id)s"
            "\t%(message)s\n", "%Y-%m-%dT%H:%M:%S"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.addHandler(handler)
    level = os.environ.get("AWS_LAMBDA_LOG_LEVEL", "").upper()
    if level in ("TRACE", "DEBUG"):
        root.setLevel(logging.DEBUG)
    elif level in ("INFO", "WARN", "WARNING", "ERROR", "FATAL", "CRITICAL"):
        root.setLevel({"INFO": logging.INFO, "WARN": logging.WARNING,
                       "WARNING": logging.WARNING, "ERROR": logging.ERROR,
                       "FATAL": logging.CRITICAL,
                       "CRITICAL": logging.CRITICAL}[level])


# ---------------------------------------------------------------- errors

def make_error(message, error_type, trace, request_id=None):
    return {
        "errorMessage": message if message else "",
        "errorType": error_type if error_type else "",
        "requestId": request_id if request_id is not None else "",
        "stackTrace": trace if trace else [],
    }


def _user_frames(tb):
    """Traceback frames minus the leading ones that belong to this file."""
    frames = traceback.extract_tb(tb)
    for i, fr in enumerate(frames):
        if os.path.abspath(fr.filename) != _THIS_FILE:
            return frames[i:]
    return frames


def fault_from_exception(exc, request_id=None):
    frames = _user_frames(exc.__traceback__)
    # Plain tuples: formatted without the column carets of Python 3.11+,
    # the same on every Python version, as AWS's runtime prints them.
    tuples = [(f.filename, f.lineno, f.name, f.line) for f in frames]
    error = make_error(str(exc), type(exc).__name__,
                       traceback.format_list(tuples), request_id)
    xray = {
        "working_directory": os.getcwd(),
        "exceptions": [{
            "message": str(exc),
            "type": type(exc).__name__,
            "stack": [{"label": f.name, "path": f.filename, "line": f.lineno}
                      for f in frames],
        }],
        "paths": sorted(set(f.filename for f in frames)),
    }
    return error, xray


# ---------------------------------------------------------------- handler

def load_handler(handler):
    try:
        modname, fname = handler.rsplit(".", 1)
    except ValueError as e:
        raise Fault("Runtime.MalformedHandlerName",
                    "Bad handler '{}': {}".format(handler, e))
    try:
        if modname.split(".")[0] in sys.builtin_module_names:
            raise Fault("Runtime.BuiltInModuleConflict",
                        "Cannot use built-in module {} as a handler module"
                        .format(modname))
        module = importlib.import_module(modname.replace("/", "."))
    except ImportError as e:
        raise Fault("Runtime.ImportModuleError",
                    "Unable to import module '{}': {}".format(modname, e))
    except SyntaxError as e:
        trace = ['  File "%s" Line %s\n    %s' % (e.filename, e.lineno, e.text)]
        raise Fault("Runtime.UserCodeSyntaxError",
                    "Syntax error in module '{}': {}".format(modname, e), trace)
    try:
        return getattr(module, fname)
    except AttributeError:
        raise Fault("Runtime.HandlerNotFound",
                    "Handler '{}' missing on module '{}'".format(fname, modname))


# ---------------------------------------------------------------- context

class CognitoIdentity(object):
    __slots__ = ["cognito_identity_id", "cognito_identity_pool_id"]


class Client(object):
    __slots__ = ["installation_id", "app_title", "app_version_name",
                 "app_version_code", "app_package_name"]


class ClientContext(object):
    __slots__ = ["custom", "env", "client"]


def _obj_from_dict(cls, d):
    if d is None:
        return None
    obj = cls()
    for field in cls.__slots__:
        setattr(obj, field, d.get(field) if isinstance(d, dict) else None)
    return obj


class LambdaContext(object):
    def __init__(self, request_id, client_context, identity, deadline_ms,
                 invoked_function_arn, tenant_id=None):
        env = os.environ
        self.aws_request_id = request_id
        self.log_group_name = env.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = env.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self.function_name = env.get("AWS_LAMBDA_FUNCTION_NAME")
        # A string, as in AWS's runtime (it comes straight from the env).
        self.memory_limit_in_mb = env.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.function_version = env.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.invoked_function_arn = invoked_function_arn
        self.tenant_id = tenant_id
        self.client_context = _obj_from_dict(ClientContext, client_context)
        if self.client_context is not None:
            self.client_context.client = _obj_from_dict(
                Client, self.client_context.client)
        self.identity = _obj_from_dict(CognitoIdentity, {})
        if identity is not None and isinstance(identity, dict):
            self.identity.cognito_identity_id = identity.get("cognitoIdentityId")
            self.identity.cognito_identity_pool_id = identity.get(
                "cognitoIdentityPoolId")
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self):
        left = self._deadline_ms - int(time.time() * 1000)
        return left if left > 0 else 0

    def log(self, msg):
        _write_stdout(str(msg))

    def __repr__(self):
        return ("LambdaContext([aws_request_id={},log_group_name={},"
                "log_stream_name={},function_name={},memory_limit_in_mb={},"
                "function_version={},invoked_function_arn={},client_context={},"
                "identity={},tenant_id={}])").format(
            self.aws_request_id, self.log_group_name, self.log_stream_name,
            self.function_name, self.memory_limit_in_mb, self.function_version,
            self.invoked_function_arn, self.client_context, self.identity,
            self.tenant_id)


def _json_header(value, name):
    if not value:
        return None
    try:
        return json.loads(value)
    except Exception as e:
        raise Fault("Runtime.LambdaContextUnmarshalError",
                    "Unable to parse {} JSON: {}".format(name, e))


# ---------------------------------------------------------------- marshalling

class _Encoder(json.JSONEncoder):
    def __init__(self):
        json.JSONEncoder.__init__(self, ensure_ascii=False, allow_nan=True)

    def default(self, o):
        if isinstance(o, decimal.Decimal):
            return float(o)
        return json.JSONEncoder.default(self, o)


_ENCODER = _Encoder()


def unmarshal_event(body):
    # Always JSON, whatever the Content-Type (Lambda only delivers JSON
    # events to managed runtimes; the Node client does the same).
    try:
        return json.loads(body)
    except Exception as e:
        raise Fault("Runtime.UnmarshalError",
                    "Unable to unmarshal input: {}".format(e))


def marshal_response(result):
    if isinstance(result, (bytes, bytearray)):
        return bytes(result), "application/unknown"
    try:
        return _ENCODER.encode(result).encode("utf-8"), "application/json"
    except (TypeError, ValueError) as e:
        raise Fault("Runtime.MarshalError",
                    "Unable to marshal response: {}".format(e))


# ---------------------------------------------------------------- Runtime API

class RuntimeAPIError(Exception):
    pass


class RuntimeClient(object):
    """Runtime API over one persistent HTTP/1.1 connection, no timeout."""

    def __init__(self, address):
        host, _, port = address.rpartition(":")
        if not host:
            host, port = address, "80"
        self.host = host.strip("[]")
        self.port = int(port)
        self.conn = None

    def _request(self, method, path, body=None, headers=None):
        hdrs = dict(headers or {})
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        for attempt in (0, 1):
            reused = self.conn is not None
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, self.port,
                                                       timeout=None)
            try:
                self.conn.request(method, API_PREFIX + path, body=body,
                                  headers=hdrs)
                resp = self.conn.getresponse()
                data = resp.read()
            except (http.client.RemoteDisconnected, BrokenPipeError,
                    ConnectionResetError, http.client.CannotSendRequest) as e:
                # An idle keep-alive connection the server had closed:
                # reconnect once.  Any other failure is fatal.
                self.conn.close()
                self.conn = None
                if reused and attempt == 0:
                    continue
                raise RuntimeAPIError("{} {}: {!r}".format(method, path, e))
            except Exception as e:
                self.conn.close()
                self.conn = None
                raise RuntimeAPIError("{} {}: {!r}".format(method, path, e))
            if resp.will_close:
                self.conn.close()
                self.conn = None
            return resp, data
        raise RuntimeAPIError("unreachable")

    def _post(self, path, body, headers=None):
        resp, data = self._request("POST", path, body, headers)
        if not 200 <= resp.status < 300:
            raise RuntimeAPIError("POST {} returned {} {}: {}".format(
                path, resp.status, resp.reason,
                data[:512].decode("utf-8", "replace")))

    def next_invocation(self):
        resp, data = self._request("GET", "/runtime/invocation/next")
        if resp.status != 200:
            raise RuntimeAPIError("GET next returned {} {}: {}".format(
                resp.status, resp.reason, data[:512].decode("utf-8", "replace")))
        return resp.headers, data

    def post_response(self, request_id, body, content_type):
        path = "/runtime/invocation/{}/response".format(request_id)
        resp, data = self._request("POST", path, body, {"Content-Type": content_type})
        if resp.status == 413:
            # The Runtime API already failed this invocation with
            # Function.ResponseSizeTooLarge; the environment stays usable.
            sys.stderr.write("response for {} refused: payload too large\n".format(request_id))
            return
        if not 200 <= resp.status < 300:
            raise RuntimeAPIError("POST {} returned {} {}: {}".format(
                path, resp.status, resp.reason, data[:512].decode("utf-8", "replace")))

    def _error_headers(self, error, xray):
        headers = {ERROR_TYPE_HEADER: error.get("errorType") or "Unhandled"}
        if xray is not None:
            cause = json.dumps(xray)
            # Header values must be one line of Latin-1 and reasonably small.
            if len(cause) <= XRAY_CAUSE_MAX and cause.isascii():
                headers[XRAY_CAUSE_HEADER] = cause
        return headers

    def post_error(self, request_id, error, xray=None):
        self._post("/runtime/invocation/{}/error".format(request_id),
                   json.dumps(error).encode("utf-8"),
                   self._error_headers(error, xray))

    def restore_next(self):
        resp, data = self._request("GET", "/runtime/restore/next")
        if resp.status != 200:
            raise RuntimeAPIError("GET restore/next returned {} {}: {}".format(
                resp.status, resp.reason, data[:512].decode("utf-8", "replace")))

    def post_restore_error(self, error):
        self._post("/runtime/restore/error", json.dumps(error).encode("utf-8"),
                   self._error_headers(error, None))

    def post_init_error(self, error):
        self._post("/runtime/init/error", json.dumps(error).encode("utf-8"),
                   self._error_headers(error, None))


# ---------------------------------------------------------------- main loop

def handle_invocation(client, handler, headers, body):
    request_id = headers.get("Lambda-Runtime-Aws-Request-Id", "")
    error = xray = None
    try:
        try:
            deadline_ms = int(headers.get("Lambda-Runtime-Deadline-Ms", "0"))
        except ValueError:
            deadline_ms = 0
        context = LambdaContext(
            request_id,
            _json_header(headers.get("Lambda-Runtime-Client-Context"),
                         "Client Context"),
            _json_header(headers.get("Lambda-Runtime-Cognito-Identity"),
                         "Cognito Identity"),
            deadline_ms,
            headers.get("Lambda-Runtime-Invoked-Function-Arn"),
            headers.get("Lambda-Runtime-Aws-Tenant-Id"))
        event = unmarshal_event(body)
        result = handler(event, context)
        payload, content_type = marshal_response(result)
    except Fault as f:
        error = make_error(f.msg, f.error_type, f.trace, request_id)
        xray = {"working_directory": os.getcwd(),
                "exceptions": [{"message": f.msg, "type": "LambdaValidationError",
                                "stack": []}],
                "paths": []}
    except Exception as e:  # includes everything a handler may raise
        error, xray = fault_from_exception(e, request_id)
    if error is not None:
        log_error(error)
        client.post_error(request_id, error, xray)
    else:
        client.post_response(request_id, payload, content_type)


def _set_trace_id(trace_id):
    if trace_id is not None:
        os.environ["_X_AMZN_TRACE_ID"] = trace_id
    else:
        os.environ.pop("_X_AMZN_TRACE_ID", None)


def _setup_path(task_root):
    here = os.path.dirname(_THIS_FILE)
    # Python put this file's directory first; user code must not see it.
    sys.path[:] = [p for p in sys.path
                   if os.path.abspath(p or ".") != here]
    ver = "python{}.{}".format(sys.version_info[0], sys.version_info[1])
    front = [task_root, "/opt/python/lib/{}/site-packages".format(ver),
             "/opt/python"]
    sys.path[:0] = [p for p in front if p not in sys.path]
    # Modules the runtime offers to functions (snapshot_restore_py), after
    # the function's own so that it can bring its own versions.
    sys.path.append(os.path.join(here, "lib"))


def run_snapstart_hooks(client):
    """SnapStart: before-snapshot hooks, wait for the restore, after-restore hooks."""
    import snapshot_restore_py as hooks
    try:
        hooks._run_before_snapshot()
    except Exception as e:
        error = fault_from_exception(e)[0]
        error["errorType"] = "Runtime.BeforeSnapshotError"
        log_error(error)
        client.post_init_error(error)
        return 1
    client.restore_next()
    try:
        hooks._run_after_restore()
    except Exception as e:
        error = fault_from_exception(e)[0]
        error["errorType"] = "Runtime.AfterRestoreError"
        log_error(error)
        client.post_restore_error(error)
        return 1
    return 0


def main():
    global _CURRENT_REQUEST_ID
    task_root = os.environ.get("LAMBDA_TASK_ROOT") or "/var/task"
    handler_name = os.environ.get("_HANDLER", "")
    if len(sys.argv) > 1:
        handler_name = sys.argv[1]
    address = os.environ.get("AWS_LAMBDA_RUNTIME_API")
    if not address:
        sys.stderr.write("flicker-ric: AWS_LAMBDA_RUNTIME_API is not set\n")
        return 1
    for stream in (sys.stdout, sys.stderr):
        try:  # unbuffered even if started without -u
            stream.reconfigure(line_buffering=True, write_through=True)
        except Exception:
            pass
    _setup_path(task_root)
    try:
        os.chdir(task_root)
    except OSError:
        pass
    client = RuntimeClient(address)
    try:
        setup_logging()
        try:
            handler = load_handler(handler_name)
            error = None
        except Fault as f:
            error = make_error(f.msg, f.error_type, f.trace)
        except Exception as e:  # module code raised while being imported
            error = fault_from_exception(e)[0]
        if error is not None:
            log_error(error)
            client.post_init_error(error)
            return 1
        if os.environ.get("AWS_LAMBDA_INITIALIZATION_TYPE") == "snap-start":
            if run_snapstart_hooks(client) != 0:
                return 1
        while True:
            headers, body = client.next_invocation()
            _CURRENT_REQUEST_ID = headers.get("Lambda-Runtime-Aws-Request-Id")
            _set_trace_id(headers.get("Lambda-Runtime-Trace-Id"))
            handle_invocation(client, handler, headers, body)
    except RuntimeAPIError as e:
        sys.stderr.write("flicker-ric: Runtime API failure: {}\n".format(e))
        sys.stderr.flush()
        return 1


if __name__ == "__main__":
    sys.exit(main())
