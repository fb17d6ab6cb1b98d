#!/usr/bin/env python3
"""Local peers for trying hookrelay by hand (standard library only).

Runs two HTTP servers until Ctrl-C:

* an **upstream** on 127.0.0.1:18081 (the `httpbin` integration in
  config/dev.toml): answers GET/POST/PUT/PATCH/DELETE on any path with
  {"ok": true, "method": ..., "path": ..., "received": <JSON body or null>},
  status 201 for POST and 200 otherwise;
* a webhook **receiver** on 127.0.0.1:18082: accepts POST /hooks, verifies the
  Standard Webhooks signature itself (HMAC-SHA256 over
  "{webhook-id}.{webhook-timestamp}.{body}", keyed with the base64 part of the
  `whsec_` secret; timestamp within 5 minutes), prints one line per webhook
  plus the pretty-printed body, and answers 204.

The signing secret comes from --secret or the HOOKRELAY_SECRET environment
variable (GET /v1/signing-secret returns it). Without one, webhooks are printed
as "unverified (no secret given)".

Usage:
    python3 scripts/dev_peers.py [--secret whsec_...] [--upstream-port 18081]
                                 [--receiver-port 18082] [--verbose]
"""

import argparse
import base64
import binascii
import hashlib
import hmac
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

HOST = "127.0.0.1"
SECRET_PREFIX = "whsec_"
TOLERANCE_S = 5 * 60  # as in the Standard Webhooks reference verifiers

_print_lock = threading.Lock()


def say(*lines):
    """Prints lines as one block, so output from the two servers never interleaves."""
    with _print_lock:
        for line in lines:
            print(line)
        sys.stdout.flush()


def secret_key(secret):
    """The HMAC key of a `whsec_...` secret; raises ValueError if malformed."""
    encoded = secret[len(SECRET_PREFIX):] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"secret is not whsec_ + base64: {e}") from None


def verify(key, headers, body):
    """Returns (ok, reason) for a webhook per the Standard Webhooks scheme."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not msg_id or not timestamp or not signatures:
        return False, "missing webhook-id, webhook-timestamp or webhook-signature header"
    try:
        ts = int(timestamp)
    except ValueError:
        return False, f"webhook-timestamp {timestamp!r} is not an integer"
    skew = time.time() - ts
    if abs(skew) > TOLERANCE_S:
        return False, f"timestamp is {skew:+.0f} s away from now (tolerance {TOLERANCE_S} s)"
    signed = msg_id.encode() + b"." + timestamp.encode() + b"." + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest())
    for entry in signatures.split(" "):
        version, _, sig = entry.partition(",")
        if version == "v1" and hmac.compare_digest(expected, sig.encode()):
            return True, ""
    return False, "no v1 signature matches the secret"


def read_body(handler):
    """The request body (Content-Length or chunked)."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()  # CRLF after each chunk
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length > 0 else b""


def parse_json(raw):
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


class QuietHandler(BaseHTTPRequestHandler):
    # HTTP/1.1 keeps hookrelay's connections alive between calls.
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 (stdlib signature)
        pass  # no access log; the servers print their own lines

    def send_json(self, status, value):
        data = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class UpstreamHandler(QuietHandler):
    """A stand-in third-party API that echoes what it was sent."""

    verbose = False

    def answer(self):
        received = parse_json(read_body(self))
        status = 201 if self.command == "POST" else 200
        path = urlsplit(self.path).path
        self.send_json(status, {"ok": True, "method": self.command, "path": path, "received": received})
        if self.verbose:
            key = self.headers.get("Idempotency-Key", "-")
            say(f"{time.strftime('%H:%M:%S')} upstream  {self.command} {path} -> {status} (idempotency-key {key})")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = answer


class ReceiverHandler(QuietHandler):
    """A partner server receiving hookrelay's signed callbacks on POST /hooks."""

    key = None  # HMAC key, or None when no secret was given

    def do_POST(self):
        body = read_body(self)
        if urlsplit(self.path).path != "/hooks":
            self.send_json(404, {"error": "POST /hooks only"})
            return
        if self.key is None:
            verdict = "unverified (no secret given)"
        else:
            ok, reason = verify(self.key, self.headers, body)
            verdict = "verified yes" if ok else f"verified NO: {reason}"
        payload = parse_json(body)
        kind = payload.get("type", "?") if isinstance(payload, dict) else "?"
        pretty = json.dumps(payload, indent=2) if payload is not None else body.decode("utf-8", "replace")
        say(
            f"{time.strftime('%H:%M:%S')} webhook {self.headers.get('webhook-id', '-')}  "
            f"type={kind}  {verdict}",
            pretty,
        )
        self.send_response(204)
        self.end_headers()

    def do_GET(self):
        self.send_json(405, {"error": "POST /hooks only"})


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--secret", default=os.environ.get("HOOKRELAY_SECRET"),
                        help="whsec_... signing secret (default: $HOOKRELAY_SECRET)")
    parser.add_argument("--upstream-port", type=int, default=18081)
    parser.add_argument("--receiver-port", type=int, default=18082)
    parser.add_argument("--verbose", action="store_true", help="also print one line per upstream call")
    args = parser.parse_args()

    if args.secret:
        try:
            ReceiverHandler.key = secret_key(args.secret)
        except ValueError as e:
            sys.exit(f"dev_peers: {e}")
    UpstreamHandler.verbose = args.verbose

    servers = [
        ThreadingHTTPServer((HOST, args.upstream_port), UpstreamHandler),
        ThreadingHTTPServer((HOST, args.receiver_port), ReceiverHandler),
    ]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    say(
        f"upstream  http://{HOST}:{args.upstream_port}  (echoes any request as JSON)",
        f"receiver  http://{HOST}:{args.receiver_port}/hooks  "
        + ("(verifying signatures)" if ReceiverHandler.key else "(no secret: printing unverified)"),
        "Ctrl-C to stop.",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
