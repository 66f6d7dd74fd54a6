#!/usr/bin/env python3
"""Istio's Bookinfo, rebuilt small with the standard library: one file, one service per process.

    bookinfo.py productpage --listen 127.0.0.1:8080 --mesh-proxy 172.30.0.11
    bookinfo.py details     --listen 127.0.0.1:8080
    bookinfo.py reviews     --listen 127.0.0.1:8080 --version v2 --mesh-proxy 172.30.0.14
    bookinfo.py ratings     --listen 127.0.0.1:8080

The services, versions, paths and calls are Bookinfo's: productpage calls details and
reviews; reviews v1 shows no stars, v2 black stars, v3 red stars (both ask ratings).
As in Bookinfo, productpage gives up on reviews after 3 s and tries once more, so a
7 s delay on ratings (v2 waits up to 10 s for it) shows as "Sorry, product reviews are
currently unavailable for this book."; v3 waits only 2.5 s and shows "Ratings service is
currently unavailable" instead.

Logging in (``POST /login`` with ``username=jason``) sets a cookie; productpage then sends
``end-user: jason`` on its calls and reviews forwards it to ratings, with the trace headers
(``x-request-id``, b3, ``traceparent``...), the way Bookinfo's apps propagate them.

Without traffic capture a call goes to the caller's own sidecar: ``--mesh-proxy IP``
sends ``http://IP:<service port>/...`` with ``Host: <service>``. Without it the service
name is dialled directly (a mesh that captures traffic).

Each answer says who served it: productpage's page carries ``data-reviews-version`` and
``data-star-color`` attributes, and the JSON of the others ``version`` and ``pod``.
"""

from __future__ import annotations

import argparse
import html
import http.client
import json
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

SERVICE_PORT = 9080
#: What Bookinfo's apps copy from a request to the calls it makes (tracing, user, session).
PROPAGATE = (
    "x-request-id", "x-b3-traceid", "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "b3",
    "traceparent", "tracestate", "x-ot-span-context", "x-cloud-trace-context", "grpc-trace-bin", "sw8",
    "end-user", "user-agent", "authorization", "jwt",
)
REVIEWS_ERROR = "Sorry, product reviews are currently unavailable for this book."
DETAILS_ERROR = "Sorry, product details are currently unavailable for this book."
RATINGS_ERROR = "Ratings service is currently unavailable"
STAR_COLOR = {"v2": "black", "v3": "red"}
#: Bookinfo's reviews waits 10 s for ratings with black stars and 2.5 s with red ones.
RATINGS_TIMEOUT = {"black": 10.0, "red": 2.5}
REVIEWS_TIMEOUT, REVIEWS_TRIES = 3.0, 2
PRODUCT = {"id": 0, "title": "The Comedy of Errors",
           "descriptionHtml": "<a href=\"https://en.wikipedia.org/wiki/The_Comedy_of_Errors\">Wikipedia Summary</a>: "
                              "The Comedy of Errors is one of William Shakespeare's early plays."}
REVIEWS = (
    ("Reviewer1", "An extremely entertaining play by Shakespeare. The slapstick humour is refreshing!"),
    ("Reviewer2", "Absolutely fun and entertaining. The play lacks thematic depth when compared to other plays by Shakespeare."),
)


class Bookinfo:
    def __init__(self, service: str, version: str, mesh_proxy: str | None, pod: str) -> None:
        self.service, self.version, self.mesh_proxy, self.pod = service, version, mesh_proxy, pod

    def call(self, service: str, path: str, headers: dict[str, str], timeout: float) -> tuple[int, Any]:
        """GET another service (through the sidecar when there is one); (0, None) when it fails."""
        host = self.mesh_proxy or service
        conn = http.client.HTTPConnection(host, SERVICE_PORT, timeout=timeout)  # no pooling, as Bookinfo
        try:
            conn.request("GET", path, headers={**headers, "Host": f"{service}:{SERVICE_PORT}"})
            resp = conn.getresponse()
            body = resp.read()
            return resp.status, json.loads(body) if resp.status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):
            return 0, None
        finally:
            conn.close()

    # -- the four services; each returns (status, content type, body)

    def details(self, path: str, headers: dict[str, str]) -> tuple[int, str, Any]:
        pid = _product_id(path, "/details/")
        if pid is None:
            return 404, "json", {"error": "please provide a numeric product id"}
        return 200, "json", {"id": pid, "author": "William Shakespeare", "year": 1595, "type": "paperback",
                             "pages": 200, "publisher": "PublisherA", "language": "English",
                             "ISBN-10": "1234567890", "ISBN-13": "123-1234567890", **self._who(headers)}

    def ratings(self, path: str, headers: dict[str, str]) -> tuple[int, str, Any]:
        pid = _product_id(path, "/ratings/")
        if pid is None:
            return 400, "json", {"error": "please provide a numeric product id"}
        return 200, "json", {"id": pid, "ratings": {"Reviewer1": 5, "Reviewer2": 4}, **self._who(headers)}

    def reviews(self, path: str, headers: dict[str, str]) -> tuple[int, str, Any]:
        pid = _product_id(path, "/reviews/")
        if pid is None:
            return 400, "json", {"error": "please provide a numeric product id"}
        color = STAR_COLOR.get(self.version)
        ratings: dict[str, Any] = {}
        rating_error = None
        if color:
            status, got = self.call("ratings", f"/ratings/{pid}", _forward(headers), RATINGS_TIMEOUT[color])
            if status == 200 and isinstance(got, dict):
                ratings = got
            else:
                rating_error = RATINGS_ERROR
        reviews = []
        for reviewer, text in REVIEWS:
            review: dict[str, Any] = {"reviewer": reviewer, "text": text}
            if color and rating_error:
                review["rating"] = {"error": rating_error}
            elif color:
                review["rating"] = {"stars": ratings.get("ratings", {}).get(reviewer, 0), "color": color}
            reviews.append(review)
        return 200, "json", {"id": str(pid), "reviews": reviews, "ratings_seen": ratings.get("trace"),
                             **self._who(headers)}

    def productpage(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, str, Any]:
        route = path.split("?")[0]
        if route == "/health":
            return 200, "text", "Product page is healthy"
        if route == "/login" and method == "POST":
            user = parse_qs(body.decode("utf-8", "replace")).get("username", [""])[0]
            cookie = f"user={user}; Path=/; HttpOnly" if user.isalnum() else "user=; Path=/; Max-Age=0"
            return 302, "redirect", cookie
        if route == "/logout":
            return 302, "redirect", "user=; Path=/; Max-Age=0"
        user = _cookie(headers.get("cookie", ""), "user")
        out = _forward(headers, user)
        if route.startswith("/api/v1/products/") and route.endswith("/reviews"):
            status, reviews = self._reviews(0, out)
            return status, "json", reviews
        if route in ("/", "/index.html", "/productpage"):
            d_status, details = self.call("details", "/details/0", out, 3.0)
            r_status, reviews = self._reviews(0, out)
            return 200, "html", _page(user, details if d_status == 200 else None, reviews if r_status == 200 else None)
        return 404, "text", "not found"

    def _reviews(self, pid: int, headers: dict[str, str]) -> tuple[int, Any]:
        status = 0
        for _ in range(REVIEWS_TRIES):  # Bookinfo's own retry, kept for the fault injection task
            status, reviews = self.call("reviews", f"/reviews/{pid}", headers, REVIEWS_TIMEOUT)
            if status == 200:
                return 200, reviews
        return status or 500, {"error": REVIEWS_ERROR}

    def _who(self, headers: dict[str, str]) -> dict[str, Any]:
        trace = {k: headers[k] for k in PROPAGATE if k in headers and k != "user-agent"}
        return {"service": self.service, "version": self.version, "pod": self.pod, "trace": trace}


def _product_id(path: str, prefix: str) -> int | None:
    rest = path.split("?")[0].removeprefix(prefix)
    return int(rest) if path.startswith(prefix) and rest.isdigit() else None


def _cookie(header: str, name: str) -> str:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return ""


def _forward(headers: dict[str, str], user: str | None = None) -> dict[str, str]:
    out = {k: v for k, v in headers.items() if k in PROPAGATE}
    if user is not None:  # productpage: the user is whoever its session says, as in Bookinfo
        out.pop("end-user", None)
        if user:
            out["end-user"] = user
    return out


def _page(user: str, details: Any, reviews: Any) -> str:
    def esc(value: object) -> str:
        return html.escape(str(value))

    if details:
        det = "".join(f"<dt>{esc(k)}</dt><dd>{esc(details[k])}</dd>"
                      for k in ("type", "pages", "publisher", "language", "ISBN-10", "ISBN-13"))
        det_html = f'<dl class="details">{det}</dl>'
    else:
        det_html = f'<p class="error">{DETAILS_ERROR}</p>'
    if reviews and "reviews" in reviews:
        version = reviews.get("version", "")
        colors = {r["rating"].get("color", "") for r in reviews["reviews"] if "rating" in r}
        color = colors.pop() if len(colors) == 1 else ""
        items = []
        for r in reviews["reviews"]:
            rating = r.get("rating") or {}
            stars = (f'<span class="stars" style="color:{esc(rating["color"])}">{"&#9733;" * int(rating["stars"])}</span>'
                     if "stars" in rating else f'<span class="error">{esc(rating["error"])}</span>' if rating else "")
            items.append(f"<blockquote><p>{esc(r['text'])}</p><small>{esc(r['reviewer'])}</small> {stars}</blockquote>")
        rev_html = (f'<div class="reviews" data-reviews-version="{esc(version)}" data-star-color="{esc(color)}">'
                    f"{''.join(items)}<p><small>reviews-{esc(version)} ({esc(reviews.get('pod', ''))})</small></p></div>")
    else:
        rev_html = f'<div class="reviews" data-reviews-version="" data-star-color=""><p class="error">{REVIEWS_ERROR}</p></div>'
    login = (f'<p>signed in as <b class="user">{esc(user)}</b> <a href="/logout">sign out</a></p>' if user else
             '<form method="post" action="/login"><input name="username" placeholder="jason">'
             '<button>Sign in</button></form>')
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Simple Bookstore App</title></head><body>"
            f"<h1>{esc(PRODUCT['title'])}</h1>{login}<p>{PRODUCT['descriptionHtml']}</p>"
            f"<h2>Book Details</h2>{det_html}<h2>Book Reviews</h2>{rev_html}</body></html>\n")


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        app = self.server.app
        if self.path.split("?")[0] in ("/health", "/healthz") and app.service != "productpage":
            status, kind, content = 200, "json", {"status": "Healthy"}
        elif self.path == "/" and app.service != "productpage":  # who answers (meshpilot demo waits on it)
            status, kind, content = 200, "json", app._who(headers)
        elif app.service == "productpage":
            status, kind, content = app.productpage(self.command, self.path, headers, body)
        else:
            status, kind, content = getattr(app, app.service)(self.path, headers)
        self.send_response(status)
        if kind == "redirect":
            data = b""
            self.send_header("set-cookie", str(content))
            self.send_header("location", "/productpage")
        else:
            data = (json.dumps(content) + "\n").encode() if kind == "json" else str(content).encode()
            self.send_header("content-type", {"json": "application/json", "html": "text/html; charset=utf-8"}
                             .get(kind, "text/plain; charset=utf-8"))
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_HEAD = _answer

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            sys.stderr.write(f"{self.server.app.pod}: {format % args}\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: Bookinfo, verbose: bool) -> None:
        self.app, self.verbose = app, verbose
        super().__init__(address, _Handler)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("service", choices=("productpage", "details", "reviews", "ratings"))
    parser.add_argument("--listen", default=os.environ.get("BOOKINFO_LISTEN", "127.0.0.1:8080"), metavar="HOST:PORT")
    parser.add_argument("--version", default=os.environ.get("BOOKINFO_VERSION", "v1"))
    parser.add_argument("--mesh-proxy", default=os.environ.get("BOOKINFO_MESH_PROXY") or None, metavar="IP",
                        help="the sidecar whose outbound listeners reach the other services")
    parser.add_argument("--pod", default=os.environ.get("BOOKINFO_POD") or socket.gethostname())
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = _Server((host, int(port)), Bookinfo(args.service, args.version, args.mesh_proxy, args.pod), args.verbose)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # PID 1 in a container: stop on `docker stop`
    print(f"{args.service} {args.version} listening on {args.listen}", flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
