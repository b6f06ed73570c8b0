#!/usr/bin/env python3
"""The browser test's web server: a folder on 127.0.0.1 (the page, its fixtures and models),
plus `/cut/PATH`, which answers with PATH's full Content-Length, sends half of its bytes and
closes the connection: a download that breaks off. Every request is logged to stderr
("GET /path ..."), so the test can count how often a model was downloaded.

usage: serve.py PORT FOLDER
"""
import functools
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if not self.path.startswith("/cut/"):
            return super().do_GET()
        path = self.translate_path(self.path[len("/cut") :])
        try:
            size = os.path.getsize(path)
        except OSError:
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.end_headers()
        with open(path, "rb") as f:
            self.wfile.write(f.read(size // 2))
        self.close_connection = True


def main():
    port, folder = int(sys.argv[1]), sys.argv[2]
    handler = functools.partial(Handler, directory=folder)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
