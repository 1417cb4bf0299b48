#!/usr/bin/env python3
"""The self-test's stand-in for the controller and the site cache (scripts/provision-selftest).

Serves ROOT over HTTP (GET/HEAD: the origin repository, the profile) and takes the
installer's callbacks (POST /callback/NODE): each must carry "Authorization: Bearer TOKEN"
(TOKEN from the environment variable VC_TOKEN), else 401. Every accepted callback is
appended as one JSON line (with the server's receive time) to EVENTS and printed in
short; the token is never printed or written. Byte counts of what was served go to
EVENTS too, as {"served": bytes} lines, once per request.
"""
import http.server
import json
import os
import sys
import time

root, port, events = sys.argv[1], int(sys.argv[2]), sys.argv[3]
token = os.environ["VC_TOKEN"]
t0 = time.monotonic()


def record(obj):
    with open(events, "a") as f:
        f.write(json.dumps(obj) + "\n")


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=root, **kw)

    def log_message(self, fmt, *args):  # no request log: quiet, and nothing secret
        pass

    def copyfile(self, source, outputfile):
        n = 0
        while True:
            b = source.read(65536)
            if not b:
                break
            outputfile.write(b)
            n += len(b)
        record({"served": n, "path": self.path})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if not self.path.startswith("/callback/"):
            self.send_error(404)
            return
        if self.headers.get("Authorization") != "Bearer " + token:
            record({"rejected": self.path})
            self.send_error(401)
            return
        try:
            ev = json.loads(body)
        except ValueError:
            self.send_error(400, "body is not JSON")
            return
        ev["_t"] = round(time.monotonic() - t0, 1)
        ev["_node"] = self.path[len("/callback/"):]
        record(ev)
        detail = ev.get("message") or ev.get("reason") or ""
        print(f"[{ev['_t']:7.1f}s] {ev['_node']}: {ev.get('phase')} {ev.get('step', '')} {detail}",
              flush=True)
        self.send_response(204)
        self.end_headers()


http.server.ThreadingHTTPServer.allow_reuse_address = True
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
print(f"serving {root} on 127.0.0.1:{port}", flush=True)
srv.serve_forever()
