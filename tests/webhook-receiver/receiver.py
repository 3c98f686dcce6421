"""The endpoint of Mage's webhook tests.

Mage signs its outgoing webhooks as Standard Webhooks; this receiver checks
them with the `standardwebhooks` package (requirements.txt), so a test passes
only when an implementation that is not Mage's accepts the signature.

    python receiver.py PORT     serve on 127.0.0.1:PORT (0: any free port);
                                the first line out is `listening <port>`
    python receiver.py --self-test
                                prove the installed verifier accepts what it
                                signs and rejects what was tampered with

The tests steer it over HTTP:

    POST /_control            {"secrets": ["whsec_..."], "script": [500, 500],
                               "status": 200, "hang_seconds": 0,
                               "location": null}   (replaces the configuration)
    GET  /_control/received   every other request, in arrival order

Any other request is verified against every configured secret, recorded when
it arrives, and answered: the codes of `script` first (one per request, in
arrival order), then `status`.
"""

import base64
import json
import os
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    import standardwebhooks
    from standardwebhooks import Webhook
    from standardwebhooks.webhooks import WebhookVerificationError
except ImportError as e:
    sys.stderr.write(
        f"the webhook receiver needs the standardwebhooks package, missing from {sys.executable} ({e}): "
        "run scripts/test, which installs tests/webhook-receiver/requirements.txt and sets "
        "MAGE_TEST_WEBHOOK_PYTHON\n"
    )
    sys.exit(2)

DEFAULTS = {"secrets": [], "script": [], "status": 200, "hang_seconds": 0, "location": None}


def verify_with(secrets, body, headers):
    """The index of the first secret under which the library accepts the
    request, or None."""
    for i, secret in enumerate(secrets):
        try:
            # json_parse=False: a body that is not JSON is still a signed body.
            Webhook(secret).verify(body, headers, json_parse=False)
            return i
        except WebhookVerificationError:
            continue
    return None


def parse_config(raw):
    """The configuration in a /_control body, or a ValueError saying what is
    wrong with it (so a typo in a test fails loudly, not silently)."""
    cfg = json.loads(raw)
    if not isinstance(cfg, dict):
        raise ValueError("the configuration must be a JSON object")
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    cfg = {**DEFAULTS, **cfg}
    if not isinstance(cfg["secrets"], list) or not all(isinstance(s, str) for s in cfg["secrets"]):
        raise ValueError("secrets must be a list of strings")
    for s in cfg["secrets"]:
        Webhook(s)  # raises on a secret that is not base64
    codes = cfg["script"] + [cfg["status"]]
    if not all(isinstance(c, int) and 100 <= c <= 599 for c in codes):
        raise ValueError("script and status must be HTTP status codes")
    if not isinstance(cfg["hang_seconds"], (int, float)) or cfg["hang_seconds"] < 0:
        raise ValueError("hang_seconds must be a number >= 0")
    if cfg["location"] is not None and not isinstance(cfg["location"], str):
        raise ValueError("location must be a string or null")
    cfg["script"] = list(cfg["script"])
    return cfg


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.config = dict(DEFAULTS, script=[])
        self.received = []

    def arrive(self, entry):
        """Records a request; returns its entry and how to answer it. The
        scripted code is taken on arrival, so concurrent requests get the
        script's codes in the order they came in."""
        with self.lock:
            cfg = self.config
            code = cfg["script"].pop(0) if cfg["script"] else cfg["status"]
            self.received.append(entry)
            return code, cfg["hang_seconds"], cfg["location"]


STATE = State()


class Handler(BaseHTTPRequestHandler):
    # Keep-alive, and every answer with a Content-Length.
    protocol_version = "HTTP/1.1"
    server_version = "mage-webhook-receiver"

    def log_message(self, format, *args):
        pass

    def read_body(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def answer(self, code, payload, location=None):
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def do_GET(self):
        if self.path == "/_control/received":
            with STATE.lock:
                entries = [dict(e) for e in STATE.received]
            self.answer(200, entries)
        else:
            self.deliver()

    def do_POST(self):
        if self.path == "/_control":
            try:
                cfg = parse_config(self.read_body())
            except Exception as e:
                self.answer(400, {"error": f"bad configuration: {e}"})
                return
            with STATE.lock:
                STATE.config = cfg
            self.answer(200, {})
        else:
            self.deliver()

    def deliver(self):
        received_at = time.time()
        body = self.read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        with STATE.lock:
            secrets = list(STATE.config["secrets"])
        index = verify_with(secrets, body, headers)
        entry = {
            "method": self.command,
            "path": self.path,
            "id": headers.get("webhook-id"),
            "timestamp": headers.get("webhook-timestamp"),
            "signature": headers.get("webhook-signature"),
            "headers": headers,
            "body": body.decode("utf-8", errors="replace"),
            "verified": index is not None,
            "verified_with": index,
            "status": None,
            "received_at": received_at,
            "answered_at": None,
        }
        code, hang, location = STATE.arrive(entry)
        if hang > 0:
            time.sleep(hang)
        with STATE.lock:
            entry["status"] = code
            entry["answered_at"] = time.time()
        payload = {"ok": True} if 200 <= code < 300 else {"error": "scripted"}
        try:
            self.answer(code, payload, location)
        except (BrokenPipeError, ConnectionResetError):
            # The sender gave up waiting (a timeout test): nothing to answer.
            self.close_connection = True

    do_PUT = do_PATCH = do_DELETE = deliver


def self_test():
    """Signs with the library and verifies through the receiver's own check:
    fails unless a good signature passes and every forgery is refused."""
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    other = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    body = b'{"type":"generation.completed","data":{"id":"g1"}}'
    msg_id = "msg_self_test"
    now = datetime.now(tz=timezone.utc)

    def headers(sig, ts=now):
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(ts.timestamp())),
            "webhook-signature": sig,
        }

    good = Webhook(secret).sign(msg_id, now, body)
    forged = Webhook(other).sign(msg_id, now, body)
    old = now - timedelta(minutes=10)
    cases = [
        ("a signed body", [secret], body, headers(good), 0),
        ("a rotation: the second secret signed", [other, secret], body, headers(good), 1),
        ("two signatures, the second good", [secret], body, headers(f"{forged} {good}"), 0),
        ("a tampered body", [secret], body.replace(b"g1", b"g2"), headers(good), None),
        ("another secret's signature", [secret], body, headers(forged), None),
        ("another message id", [secret], body, {**headers(good), "webhook-id": "msg_other"}, None),
        ("a stale timestamp", [secret], body, headers(Webhook(secret).sign(msg_id, old, body), old), None),
        ("no signature header", [secret], body, {"webhook-id": msg_id, "webhook-timestamp": "1"}, None),
    ]
    failed = []
    for name, secrets, data, hdrs, expected in cases:
        got = verify_with(secrets, data, hdrs)
        if got != expected:
            failed.append(f"{name}: verified with {got}, expected {expected}")
    where = os.path.dirname(standardwebhooks.__file__)
    if failed:
        sys.stderr.write(f"self-test of standardwebhooks ({where}) FAILED:\n  " + "\n  ".join(failed) + "\n")
        return 1
    print(f"self-test ok: standardwebhooks from {where}, {len(cases)} cases")
    return 0


def main(argv):
    if argv[1:] == ["--self-test"]:
        return self_test()
    if len(argv) != 2 or not argv[1].isdigit():
        sys.stderr.write(f"usage: {argv[0]} PORT | --self-test\n")
        return 2
    server = ThreadingHTTPServer(("127.0.0.1", int(argv[1])), Handler)
    server.daemon_threads = True
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
