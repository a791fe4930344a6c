"""Hostile code packages: refused with 400 InvalidParameterValueException,
nothing written outside the store, and the daemon keeps serving."""
import io
import stat
import uuid
import zipfile

import pytest
from botocore.exceptions import ClientError

from harness import ROLE, client_error_code, do_invoke, make_zip


def zip_entries(entries):
    """entries: [(arcname, data, mode)] -> zip bytes; mode with S_IFLNK makes a symlink."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for arcname, data, mode in entries:
            zi = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = (mode & 0xFFFF) << 16
            zi.create_system = 3  # unix: mode bits are meaningful
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return buf.getvalue()


APP = ("app.py", b"def handler(e, c):\n    return 'ok'\n", stat.S_IFREG | 0o644)


def create(client, name, zip_bytes):
    return client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                  Handler="app.handler", Code={"ZipFile": zip_bytes})


def assert_refused(client, name, zip_bytes):
    with pytest.raises(ClientError) as ei:
        create(client, name, zip_bytes)
    assert client_error_code(ei.value) == "InvalidParameterValueException", ei.value.response
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    with pytest.raises(ClientError):
        client.get_function(FunctionName=name)


@pytest.fixture
def outside(tmp_path):
    """A host directory the hostile zips aim at (absolute path)."""
    d = tmp_path / f"outside-{uuid.uuid4().hex[:6]}"
    d.mkdir()
    return d


@pytest.fixture(autouse=True)
def still_serving(flicker, lam):
    yield
    assert flicker.health() == 200
    assert flicker.running(), "flicker died"
    lam.list_functions(MaxItems=1)


def test_not_a_zip(lam, fname):
    assert_refused(lam, fname, b"this is not a zip file at all")


def test_truncated_zip(lam, fname):
    z = make_zip("py_echo")
    assert_refused(lam, fname, z[: len(z) // 2])


def test_empty_zip_bytes(lam_novalidate, fname):
    assert_refused(lam_novalidate, fname, b"")


def test_path_traversal(lam, fname, outside):
    target = outside / "traversal-pwned"
    rel = "../" * 40 + str(target).lstrip("/")
    z = zip_entries([APP, (rel, b"pwned", stat.S_IFREG | 0o644)])
    assert_refused(lam, fname, z)
    assert not target.exists(), "zip path traversal wrote outside the store"


def test_absolute_path(lam, fname, outside):
    target = outside / "absolute-pwned"
    z = zip_entries([APP, (str(target), b"pwned", stat.S_IFREG | 0o644)])
    assert_refused(lam, fname, z)
    assert not target.exists(), "absolute zip entry written on the host"


def test_symlink_dir_escape(lam, fname, outside):
    """A symlink to a host directory followed by a file 'through' it: the
    classic extraction escape.  Refused, and nothing lands in the target."""
    z = zip_entries([APP, ("evil", str(outside).encode(), stat.S_IFLNK | 0o777),
                     ("evil/pwned", b"pwned", stat.S_IFREG | 0o644)])
    assert_refused(lam, fname, z)
    assert not (outside / "pwned").exists(), "extraction followed a symlink out of the store"


def test_symlink_to_host_file(lam, fname, invoke, outside):
    """A symlink pointing at an absolute host path.  Lambda keeps symlinks,
    so this may be accepted; if it is, reading it inside the sandbox must not
    reveal the host file (the sandbox has its own root)."""
    secret = outside / f"symlink-target-{uuid.uuid4().hex[:6]}"
    secret.write_text("host-secret-content")
    code = (b"def handler(e, c):\n"
            b"    try:\n        return open('/var/task/link').read()\n"
            b"    except Exception as ex:\n        return 'ERR ' + type(ex).__name__\n")
    z = zip_entries([("app.py", code, stat.S_IFREG | 0o644),
                     ("link", str(secret).encode(), stat.S_IFLNK | 0o777)])
    try:
        create(lam, fname, z)
    except ClientError as e:
        assert client_error_code(e) == "InvalidParameterValueException", e.response
        return
    try:
        lam.get_waiter("function_active_v2").wait(FunctionName=fname,
                                                  WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        r = invoke(fname, {})
        assert r.function_error is None, r
        assert "host-secret-content" not in r.payload.decode(), "symlink read a host file"
    finally:
        lam.delete_function(FunctionName=fname)


def test_zip_bomb(lam, fname):
    """~300 MB of zeros in a ~300 KB zip: over Lambda's 250 MB unzipped limit."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        zf.writestr("app.py", APP[1])
        with zf.open("zeros.bin", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(300):
                f.write(chunk)
    z = buf.getvalue()
    assert len(z) < 2 * 1024 * 1024
    assert_refused(lam, fname, z)


def test_lying_sizes(lam, fname):
    """A central directory claiming a tiny uncompressed size for a big entry:
    the extractor must count real bytes, not trust the header."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("app.py", APP[1])
        zf.writestr("big.bin", b"\0" * (300 * 1024 * 1024))
    data = bytearray(buf.getvalue())
    # Patch the uncompressed size (offset 24 in the central directory header,
    # 22 in the local header) of big.bin to 1 byte.
    name = b"big.bin"
    i = data.find(b"PK\x01\x02" + bytes(0))
    while i != -1:
        n = int.from_bytes(data[i + 28:i + 30], "little")
        if data[i + 46:i + 46 + n] == name:
            data[i + 24:i + 28] = (1).to_bytes(4, "little")
        i = data.find(b"PK\x01\x02", i + 4)
    j = data.find(b"PK\x03\x04")
    while j != -1:
        n = int.from_bytes(data[j + 26:j + 28], "little")
        if data[j + 30:j + 30 + n] == name:
            data[j + 22:j + 26] = (1).to_bytes(4, "little")
        j = data.find(b"PK\x03\x04", j + 4)
    assert_refused(lam, fname, bytes(data))


def test_too_many_entries_is_fine_or_refused(lam, fname):
    # 20k tiny files: either accepted (and then invocable) or refused cleanly;
    # never a crash.
    entries = [APP] + [(f"d/f{i}.txt", b"x", stat.S_IFREG | 0o644) for i in range(20000)]
    try:
        create(lam, fname, zip_entries(entries))
    except ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 413), e.response
        return
    lam.get_waiter("function_active_v2").wait(FunctionName=fname,
                                              WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    r = do_invoke(lam, fname, {})
    assert r.json == "ok"
    lam.delete_function(FunctionName=fname)


def test_update_code_with_bad_zip_keeps_old(lam, deploy, invoke):
    name = deploy("py_echo")
    before = lam.get_function_configuration(FunctionName=name)["CodeSha256"]
    with pytest.raises(ClientError) as ei:
        lam.update_function_code(FunctionName=name, ZipFile=b"garbage")
    assert client_error_code(ei.value) == "InvalidParameterValueException"
    assert lam.get_function_configuration(FunctionName=name)["CodeSha256"] == before
    assert invoke(name, {"x": 1}).json["event"] == {"x": 1}


def test_oversized_upload(flicker, fname):
    """A 70 MB zip upload (Lambda's direct-upload limit is 50 MB zipped):
    refused with a 4xx (RequestTooLargeException 413 or
    InvalidParameterValueException 400), daemon unharmed."""
    import os as _os
    blob = _os.urandom(70 * 1024 * 1024)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("app.py", APP[1])
        zf.writestr("random.bin", blob)
    c = flicker.client(read_timeout=300)
    with pytest.raises(ClientError) as ei:
        create(c, fname, buf.getvalue())
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 413)
    assert client_error_code(ei.value) in ("RequestTooLargeException",
                                           "InvalidParameterValueException",
                                           "CodeStorageExceededException")
