"""Fault injection for the local AWS stand-in: AWS answering badly, on purpose, before moto sees the call.

A seeded fraction of the calls to each service is answered with one of the failures AWS really
returns (throttling, 500, 503) or with a dropped connection, and calls can be delayed. Faults are off
unless a spec turns them on: ``python -m local.standin --faults SPEC [--fault-seed N]``, ``make run``
with ``STANDIN_FAULTS=SPEC``, or at runtime with :func:`set_faults` (``POST /_standin/faults``).

Spec: comma-separated ``key=value`` items, e.g. ``s3=0.2,glue=0.2,sns=0.2,logs=0.2,latency_ms=50``::

    s3=0.2 | glue= | sns= | logs=      fraction of that service's calls answered with a fault
    all=0.2                            the same fraction for every service above
    kinds=throttle+500+503+reset       which faults to draw from (default: all four, equally likely)
    latency_ms=50                      hold every call this long before it reaches moto
    reply_ms=50                        hold every answer this long after moto did the work
    sns.latency_ms=2000                ... for one service only
    sns:Publish.reply_ms=30000         ... or for one action (X-Amz-Target / Action name, S3: GetObject ...)
    glue_startup_ms=20000              each Glue job run stays RUNNING this long before its script starts
    seed=7                             seed of the fault draws (``--fault-seed`` sets it too)
    off                                no faults (the default)

The faults, by service protocol:

- ``throttle``: S3 503 ``SlowDown``; SNS 400 ``Throttling``; Glue and Logs 400 ``ThrottlingException``;
- ``500``: ``InternalError`` (S3) / ``InternalFailure``; ``503``: ``ServiceUnavailable``;
- ``reset``: the connection is closed with a TCP reset and no answer.

Every fault is decided and answered *before* the call reaches moto, so an injected failure has no
side effect: a faulted SNS Publish sent nothing, a faulted PutObject wrote nothing. A held call
(``latency_ms``) whose client hangs up before it is released is dropped unseen, as a request lost on
the way. ``reply_ms`` is the other case real AWS has: the work is done and the answer is late, or
lost if the client has gone by then.

The service of a call comes from its SigV4 credential scope (``.../us-east-1/<service>/aws4_request``)
or its ``X-Amz-Target``. SQS and IAM are never faulted (tests read the subscriber queues through SQS),
nor is a call carrying the ``X-Standin-No-Faults`` header: the stand-in's own Glue runner (script
download, CloudWatch log writing) and test harnesses reading results send it (:func:`exempt`). A Glue
job's script is not exempt: its boto3 calls meet the faults like any other client's.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import random
import re
import socket
import struct
import threading
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

SERVICES = ("s3", "glue", "sns", "logs")
KINDS = ("throttle", "500", "503", "reset")
CONTROL_PATH = "/_standin/faults"
EXEMPT_HEADER = "X-Standin-No-Faults"
_EXEMPT_ENVIRON = "HTTP_" + EXEMPT_HEADER.upper().replace("-", "_")
_ABORT_ENVIRON = "standin.abort"  # set on a call answered with nothing: "reset" or "drop"
_HOLD_STEP = 0.05  # seconds between checks of a held call (client gone? spec changed?)

_SCOPE = re.compile(r"Credential=[^/,\s]+/\d{8}/[^/,\s]+/([a-z0-9-]+)/aws4_request")
_TARGET_PREFIXES = {"AWSGlue": "glue", "Logs_20140328": "logs", "AmazonSQS": "sqs"}


# ----------------------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class FaultSpec:
    """What to inject: fault rates per service, holds per service or action, Glue start-up time."""

    rates: Mapping[str, float] = field(default_factory=dict)
    latency_ms: Mapping[str, int] = field(default_factory=dict)  # "*", "<service>" or "<service>:<Action>"
    reply_ms: Mapping[str, int] = field(default_factory=dict)
    kinds: tuple[str, ...] = KINDS
    glue_startup_ms: int = 0
    seed: int | None = None

    @property
    def active(self) -> bool:
        """Whether the spec does anything at all."""
        return bool(any(self.rates.values()) or self.latency_ms or self.reply_ms or self.glue_startup_ms)

    def rate(self, service: str) -> float:
        return self.rates.get(service, 0.0)

    def hold_ms(self, phase: str, service: str, action: str) -> int:
        """Milliseconds to hold a call (``phase`` ``latency``) or its answer (``reply``): the most
        specific entry wins (``service:Action``, then ``service``, then every service)."""
        table = self.latency_ms if phase == "latency" else self.reply_ms
        for key in (f"{service}:{action}", service, "*"):
            if key in table:
                return table[key]
        return 0

    def text(self) -> str:
        """The canonical spec string (``parse_spec(spec.text()) == spec``)."""
        items = [f"{service}={rate:g}" for service, rate in sorted(self.rates.items()) if rate]
        for name, table in (("latency_ms", self.latency_ms), ("reply_ms", self.reply_ms)):
            for key, value in sorted(table.items()):
                items.append(f"{name}={value}" if key == "*" else f"{key}.{name}={value}")
        if self.kinds != KINDS:
            items.append("kinds=" + "+".join(self.kinds))
        if self.glue_startup_ms:
            items.append(f"glue_startup_ms={self.glue_startup_ms}")
        if self.seed is not None:
            items.append(f"seed={self.seed}")
        return ",".join(items) or "off"


def parse_spec(text: str | None) -> FaultSpec:
    """Read a spec string (see the module docstring); raise ValueError naming the bad item."""
    rates: dict[str, float] = {}
    holds: dict[str, dict[str, int]] = {"latency_ms": {}, "reply_ms": {}}
    kinds, glue_startup_ms, seed = KINDS, 0, None
    for item in (part.strip() for part in (text or "").split(",")):
        if item.lower() in ("", "off", "none"):
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValueError(f"fault spec item {item!r} is not key=value")
        try:
            if key in SERVICES or key == "all":
                rate = float(value)
                if not 0.0 <= rate <= 1.0:
                    raise ValueError("a fraction between 0 and 1")
                rates.update(dict.fromkeys(SERVICES if key == "all" else (key,), rate))
            elif key == "kinds":
                kinds = tuple(kind.strip() for kind in value.split("+"))
                unknown = [kind for kind in kinds if kind not in KINDS]
                if unknown or not kinds:
                    raise ValueError(f"kinds from {'+'.join(KINDS)}")
            elif key == "glue_startup_ms":
                glue_startup_ms = _milliseconds(value)
            elif key == "seed":
                seed = int(value)
            else:
                target, _, name = key.rpartition(".")
                if name not in holds:
                    raise ValueError(f"one of {', '.join((*SERVICES, 'all', 'kinds', 'seed'))} or a hold")
                service, _, action = target.partition(":")
                if target and service not in SERVICES:
                    raise ValueError(f"a hold on one of {', '.join(SERVICES)}")
                holds[name][target or "*"] = _milliseconds(value)
        except ValueError as error:
            raise ValueError(f"fault spec item {item!r}: expected {error}") from None
    return FaultSpec(rates, holds["latency_ms"], holds["reply_ms"], kinds, glue_startup_ms, seed)


def _milliseconds(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("milliseconds >= 0")
    return number


# ------------------------------------------------------------------------------ identification


def service_of(environ: Mapping[str, str]) -> str | None:
    """The AWS service a WSGI request is for: its ``X-Amz-Target`` prefix or SigV4 credential scope."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        service = _TARGET_PREFIXES.get(target.split(".", 1)[0])
        if service:
            return service
    scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if scope:
        return scope.group(1)
    credential = urllib.parse.parse_qs(environ.get("QUERY_STRING", "")).get("X-Amz-Credential", [""])[0]
    parts = credential.split("/")
    return parts[3] if len(parts) == 5 else None


def action_of(environ: Mapping[str, str], service: str, body: bytes = b"") -> str:
    """The API action of a request (``Publish``, ``StartJobRun``, ``PutObject`` ...), best effort."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if "." in target:
        return target.split(".", 1)[1]
    if service == "s3":
        return _s3_action(environ)
    form = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""))
    if not form.get("Action") and body:
        with contextlib.suppress(UnicodeDecodeError):
            form = urllib.parse.parse_qs(body.decode("ascii"))
    return form.get("Action", [""])[0]


def _s3_action(environ: Mapping[str, str]) -> str:
    method = environ.get("REQUEST_METHOD", "GET")
    has_key = "/" in environ.get("PATH_INFO", "/").strip("/")
    query = environ.get("QUERY_STRING", "")
    if not environ.get("PATH_INFO", "/").strip("/"):
        return "ListBuckets"
    if not has_key:
        if method == "GET":
            return "ListObjectsV2" if "list-type=2" in query else "ListObjects"
        return {"PUT": "CreateBucket", "HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method, "PostBucket")
    if method == "PUT" and environ.get("HTTP_X_AMZ_COPY_SOURCE"):
        return "CopyObject"
    return {"GET": "GetObject", "PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(
        method, "PostObject"
    )


# ------------------------------------------------------------------------------------ injector


class FaultInjector:
    """The current spec, the seeded draws and what was injected (thread-safe)."""

    def __init__(self, spec: FaultSpec | None = None, seed: int | None = None):
        self._lock = threading.Lock()
        self.configure(spec or FaultSpec(), seed)

    def configure(self, spec: FaultSpec, seed: int | None = None) -> None:
        """Switch to ``spec``; the draws restart from ``spec.seed``, else ``seed``, else 0. Counters reset."""
        with self._lock:
            self.spec = spec
            self.seed = spec.seed if spec.seed is not None else (seed or 0)
            self._streams: dict[str, random.Random] = {}
            self.generation = getattr(self, "generation", 0) + 1
            self.calls: Counter[str] = Counter()
            self.faults: Counter[str] = Counter()
            self.dropped: Counter[str] = Counter()
            self.held: dict[str, dict] = {}

    def draw(self, service: str) -> str | None:
        """Count a call to ``service`` and decide its fault (None: answer it normally)."""
        with self._lock:
            self.calls[service] += 1
            rate = self.spec.rate(service)
            # One stream per service: its n-th call meets the same draw however the calls of the
            # other services interleave with it (a shared stream made the soak's few SNS calls luck).
            stream = self._streams.get(service)
            if stream is None:
                stream = self._streams[service] = random.Random(f"{self.seed}:{service}")  # noqa: S311 - test faults
            if not rate or stream.random() >= rate:
                return None
            kind = stream.choice(self.spec.kinds)
            self.faults[f"{service}:{kind}"] += 1
            return kind

    @contextlib.contextmanager
    def holding(self, phase: str, service: str, action: str):
        """Show a held call in :meth:`state` while the ``with`` block runs."""
        token = uuid.uuid4().hex
        with self._lock:
            self.held[token] = {"phase": phase, "service": service, "action": action, "since": time.time()}
        try:
            yield
        finally:
            with self._lock:
                self.held.pop(token, None)

    def note_dropped(self, phase: str, service: str) -> None:
        with self._lock:
            self.dropped[f"{service}:{phase}"] += 1

    def state(self) -> dict:
        """The spec, seed and counters as plain JSON data."""
        with self._lock:
            return {
                "spec": self.spec.text(),
                "seed": self.seed,
                "calls": dict(self.calls),
                "faults": dict(self.faults),
                "dropped": dict(self.dropped),
                "held": sorted(self.held.values(), key=lambda held: held["since"]),
            }


# ---------------------------------------------------------------------------------- middleware


class FaultMiddleware:
    """WSGI middleware in front of moto: the control endpoint, holds and faults."""

    def __init__(self, app: Callable, injector: FaultInjector):
        self.app = app
        self.injector = injector

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == CONTROL_PATH:
            return self._control(environ, start_response)
        spec = self.injector.spec
        service = service_of(environ)
        if not spec.active or service not in SERVICES or environ.get(_EXEMPT_ENVIRON):
            return self.app(environ, start_response)
        body = buffer_body(environ)
        action = action_of(environ, service, body)
        if not self._hold(environ, "latency", service, action):
            environ[_ABORT_ENVIRON] = "drop"
            raise ConnectionAbortedError("client left while its call was held")  # werkzeug answers nothing
        kind = self.injector.draw(service)
        if kind == "reset":
            _reset(environ)
        if kind is not None:
            return _fault_response(environ, start_response, service, kind)
        if not self.injector.spec.hold_ms("reply", service, action):
            return self.app(environ, start_response)
        return self._reply_later(environ, start_response, service, action)

    def _hold(self, environ: dict, phase: str, service: str, action: str) -> bool:
        """Hold the call for the spec's time (re-read as it changes); False if the client left meanwhile."""
        if not self.injector.spec.hold_ms(phase, service, action):
            return True
        started = time.monotonic()
        with self.injector.holding(phase, service, action):
            while (time.monotonic() - started) * 1000 < self.injector.spec.hold_ms(phase, service, action):
                if _client_gone(environ):
                    self.injector.note_dropped(phase, service)
                    return False
                time.sleep(_HOLD_STEP)
        return True

    def _reply_later(self, environ: dict, start_response: Callable, service: str, action: str) -> list[bytes]:
        """Let moto do the work, then hold its answer; a client gone by then never gets it."""
        answer: dict = {}

        def capture(status, headers, exc_info=None):
            answer.update(status=status, headers=headers)
            return lambda data: None

        result = self.app(environ, capture)
        try:
            body = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        if not self._hold(environ, "reply", service, action):
            environ[_ABORT_ENVIRON] = "drop"
            raise ConnectionAbortedError("client left before its answer was sent")
        start_response(answer["status"], answer["headers"])
        return [body]

    def _control(self, environ: dict, start_response: Callable) -> list[bytes]:
        """``GET``: the injector's state. ``POST {"spec": "...", "seed": N}``: switch faults."""
        status = "200 OK"
        if environ.get("REQUEST_METHOD") == "POST":
            try:
                request = json.loads(buffer_body(environ) or b"{}")
                self.injector.configure(parse_spec(request.get("spec")), request.get("seed"))
            except (ValueError, TypeError, AttributeError) as error:
                body = json.dumps({"error": str(error)}).encode()
                start_response("400 Bad Request", [("Content-Type", "application/json")])
                return [body]
        body = json.dumps(self.injector.state()).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]


def buffer_body(environ: dict) -> bytes:
    """Read the whole request body now (so a closed connection can be told apart from unread data)."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        body = stream.read()
    else:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = stream.read(length) if length > 0 else b""
    environ["wsgi.input"] = io.BytesIO(body)
    return body


def _client_gone(environ: dict) -> bool:
    """Whether the client closed its connection (its whole request was already read)."""
    sock = environ.get("werkzeug.socket")
    if sock is None:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def _reset(environ: dict) -> None:
    """Answer nothing and have :class:`AbortingRequestHandler` reset the connection."""
    environ[_ABORT_ENVIRON] = "reset"
    raise ConnectionResetError("fault injected: connection reset")  # werkzeug writes nothing


class AbortingRequestHandler:
    """Mixin for werkzeug's request handler: a call the middleware answered with nothing ends its
    connection (no wait for a next request on it); an injected ``reset`` ends it with a TCP RST."""

    def run_wsgi(self) -> None:
        super().run_wsgi()
        if getattr(self, "environ", {}).get(_ABORT_ENVIRON):
            self.close_connection = True

    def finish(self) -> None:
        super().finish()
        if getattr(self, "environ", {}).get(_ABORT_ENVIRON) == "reset":
            with contextlib.suppress(OSError):  # SO_LINGER 0: close() sends RST, not FIN
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.connection.close()


_CODES = {
    # kind: (status, {protocol: (code, message)})
    "throttle": {
        "s3": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
        "sns": ("400 Bad Request", "Throttling", "Rate exceeded"),
        "json": ("400 Bad Request", "ThrottlingException", "Rate exceeded"),
    },
    "500": {
        "s3": ("500 Internal Server Error", "InternalError", "We encountered an internal error. Please try again."),
        "sns": ("500 Internal Server Error", "InternalFailure", "Internal failure"),
        "json": ("500 Internal Server Error", "InternalFailure", "Internal failure"),
    },
    "503": {
        "s3": ("503 Service Unavailable", "ServiceUnavailable", "Service is unable to handle request."),
        "sns": ("503 Service Unavailable", "ServiceUnavailable", "Service unavailable"),
        "json": ("503 Service Unavailable", "ServiceUnavailable", "Service unavailable"),
    },
}


def fault_body(service: str, kind: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """(status, headers, body) of an injected error, in the service's own protocol."""
    protocol = service if service in ("s3", "sns") else "json"
    status, code, message = _CODES[kind][protocol]
    request_id = uuid.uuid4().hex
    if protocol == "s3":
        body = (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>{request_id}</RequestId></Error>"
        )
        headers = [("Content-Type", "application/xml"), ("x-amz-request-id", request_id)]
    elif protocol == "sns":
        fault_type = "Sender" if status.startswith("4") else "Receiver"
        body = (
            '<ErrorResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">'
            f"<Error><Type>{fault_type}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        headers = [("Content-Type", "text/xml"), ("x-amzn-RequestId", request_id)]
    else:
        body = json.dumps({"__type": code, "message": message})
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-ErrorType", code),
            ("x-amzn-RequestId", request_id),
        ]
    return status, headers, body.encode()


def _fault_response(environ: dict, start_response: Callable, service: str, kind: str) -> list[bytes]:
    status, headers, body = fault_body(service, kind)
    if environ.get("REQUEST_METHOD") == "HEAD":
        body = b""
    start_response(status, [*headers, ("Content-Length", str(len(body)))])
    return [body]


# ------------------------------------------------------------------------------------- clients


def exempt(client):
    """Mark every call of a boto3 ``client`` as exempt from faults; returns the client."""

    def add_header(request, **_):
        request.headers[EXEMPT_HEADER] = "1"

    client.meta.events.register_first("before-sign.*.*", add_header)
    return client


def _control_call(url: str, method: str, payload: dict | None = None) -> dict:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "http":
        raise ValueError(f"the stand-in is plain http on loopback, not {url!r}")
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port or 80, timeout=30)
    try:
        body = None if payload is None else json.dumps(payload).encode()
        connection.request(method, CONTROL_PATH, body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        data = json.loads(response.read() or b"{}")
    finally:
        connection.close()
    if response.status != 200:
        raise ValueError(data.get("error", f"stand-in answered {response.status}"))
    return data


def set_faults(url: str, spec: str | FaultSpec, seed: int | None = None) -> dict:
    """Switch the stand-in at ``url`` to ``spec`` (``"off"`` for none); returns its fault state."""
    text = spec.text() if isinstance(spec, FaultSpec) else spec
    return _control_call(url, "POST", {"spec": text, "seed": seed})


def fault_state(url: str) -> dict:
    """The stand-in's current spec, seed, call and fault counters, and calls held right now."""
    return _control_call(url, "GET")
