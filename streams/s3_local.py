"""`python -m streams.s3_local`: the local S3-compatible server of `./stack` (audit WORM export).

Production exports the audit log to real S3 Object Lock (CRASH_AUDIT_S3_*). Locally the stack
needs a server that *enforces* Object Lock retention, and everything here must come from PyPI,
npm, Maven Central or Debian: MinIO and Ceph's gateway are not there (or need a cluster), and
most S3 emulators store a lock but let the object go. moto's server mode (PyPI) refuses to delete
a locked version (DeleteObject with a version id, and DeleteObjects, bypass header or not), and a
PUT on a locked key only adds a new version (If-None-Match: * refuses even that), the locked
version's bytes stay. Two holes remain in moto 5 that real S3 closes, and that would let a
COMPLIANCE lock be undone in two calls; this guard refuses them as S3 does (403 AccessDenied /
409 InvalidBucketState) before moto sees them:

- PutObjectRetention that shortens a COMPLIANCE retention or changes its mode;
- PutBucketVersioning Suspended on a bucket with Object Lock.

moto keeps its objects in memory: a restart of this server loses them (`crash-audit verify --s3`
then reports the missing segments). tests/test_audit.py checks every rule above.
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

log = logging.getLogger("crash.s3_local")

_DATE = re.compile(rb"<RetainUntilDate>([^<]+)</RetainUntilDate>")
_MODE = re.compile(rb"<Mode>([^<]+)</Mode>")
_SUSPENDED = re.compile(rb"<Status>\s*Suspended\s*</Status>")

StartResponse = Callable[..., Any]


def _error(start_response: StartResponse, status: str, code: str, message: str) -> Iterable[bytes]:
    body = (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            "</Error>").encode()
    start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))


class ComplianceGuard:
    """WSGI middleware in front of moto: the COMPLIANCE rules moto does not enforce."""

    def __init__(self, app: Callable[[dict, StartResponse], Iterable[bytes]]) -> None:
        self.app = app

    def __call__(self, environ: dict, start_response: StartResponse) -> Iterable[bytes]:
        query = environ.get("QUERY_STRING", "")
        method = environ.get("REQUEST_METHOD", "")
        if method == "PUT" and ("retention" in query.split("&") or "retention=" in query):
            body = self._body(environ)
            current = self._current_lock(environ)
            if current is not None and current[0] == "COMPLIANCE" and current[1] > datetime.now(current[1].tzinfo):
                mode = _MODE.search(body)
                until = _DATE.search(body)
                if (mode is None or mode.group(1) != b"COMPLIANCE" or until is None
                        or _when(until.group(1).decode()) < current[1]):
                    return _error(start_response, "403 Forbidden", "AccessDenied",
                                  "a COMPLIANCE retention can be neither shortened nor changed to another mode")
        elif method == "PUT" and "versioning" in query.split("&"):
            body = self._body(environ)
            if _SUSPENDED.search(body) and self._bucket_locked(environ):
                return _error(start_response, "409 Conflict", "InvalidBucketState",
                              "versioning cannot be suspended on a bucket with Object Lock")
        return self.app(environ, start_response)

    @staticmethod
    def _body(environ: dict) -> bytes:
        """Read the request body and put it back for moto."""
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        return body

    def _internal(self, environ: dict, method: str, query: str) -> tuple[str, dict[str, str]]:
        """A request of our own to moto (same path and credentials): status line and headers."""
        sub = {k: v for k, v in environ.items() if not k.startswith("wsgi.")}
        sub.update({"REQUEST_METHOD": method, "QUERY_STRING": query, "CONTENT_LENGTH": "0",
                    "wsgi.input": io.BytesIO(b""), "wsgi.errors": environ.get("wsgi.errors"),
                    "wsgi.url_scheme": environ.get("wsgi.url_scheme", "http"), "wsgi.version": (1, 0),
                    "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False})
        captured: dict[str, Any] = {}

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
            captured["status"], captured["headers"] = status, {k.lower(): v for k, v in headers}

        for _ in self.app(sub, start):
            pass
        return captured.get("status", "500"), captured.get("headers", {})

    def _current_lock(self, environ: dict) -> tuple[str, datetime] | None:
        version = [p.split("=", 1)[1] for p in environ.get("QUERY_STRING", "").split("&") if p.startswith("versionId=")]
        status, headers = self._internal(environ, "HEAD", f"versionId={version[0]}" if version else "")
        mode, until = headers.get("x-amz-object-lock-mode"), headers.get("x-amz-object-lock-retain-until-date")
        if not status.startswith("200") or not mode or not until:
            return None
        return mode, _when(until)

    def _bucket_locked(self, environ: dict) -> bool:
        status, _ = self._internal(environ, "GET", "object-lock")
        return status.startswith("200")


def make_app() -> ComplianceGuard:
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    return ComplianceGuard(DomainDispatcherApplication(create_backend_app))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=19000)
    parser.add_argument("--pidfile")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from moto.moto_server.werkzeug_app import MotoRequestHandler
    from werkzeug.serving import make_server

    server = make_server(args.host, args.port, make_app(), threaded=True, request_handler=MotoRequestHandler)
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(str(os.getpid()))
    log.warning("local S3 (moto + COMPLIANCE guard) on %s:%d", args.host, args.port)
    server.serve_forever()


if __name__ == "__main__":  # pragma: no cover
    main()
