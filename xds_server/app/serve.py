"""``meshpilot serve``: watch a directory of manifests and serve them to Envoy over xDS.

source (files) -> debounce -> World -> translator -> cache -> streams.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any

import structlog

from translators.errors import ConfigError
from translators.model.world import World
from xds_server.app.debounce import Debouncer
from xds_server.app.httpd import HttpServer, Reply, json_reply, text_reply
from xds_server.app.pipeline import Pipeline, full_collection
from xds_server.sources.files import DirectorySource, LoadResult
from xds_server.xds.server import XdsServer, start_grpc
from xds_server.xds.status import CONFIG_ERRORS, short

log = structlog.get_logger("meshpilot")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", required=True, type=Path, help="directory of Kubernetes/Istio YAML manifests")
    p.add_argument("--xds-address", default="127.0.0.1:15010", help="xDS gRPC listen address (HOST:PORT)")
    p.add_argument("--http-address", default="127.0.0.1:15014", help="health, metrics and debug (HOST:PORT)")
    p.add_argument("--namespace", default="default", help="namespace of manifests that name none")
    p.add_argument("--debounce-quiet", type=float, default=0.1, metavar="SECONDS", help="push after this much quiet")
    p.add_argument("--debounce-max", type=float, default=10.0, metavar="SECONDS", help="push at the latest after this")
    p.add_argument("--poll", action="store_true", help="poll the directory instead of using inotify")
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    if not args.config_dir.is_dir():
        log.error("config directory not found", path=str(args.config_dir))
        return 2
    try:
        asyncio.run(ControlPlane(args).run())
    except OSError as e:
        log.error("cannot start", error=str(e))
        return 1
    return 0


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = structlog.dev.ConsoleRenderer() if console else structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"address must be HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


class ControlPlane:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.source = DirectorySource(args.config_dir, default_namespace=args.namespace)
        self.pipeline = Pipeline()
        self.cache = self.pipeline.cache
        self.xds = XdsServer(self.cache)
        self.ready = False
        self._last_apply = 0.0
        self._reported: set[str] = set()
        self.debouncer: Debouncer[LoadResult] = Debouncer(
            self.apply, quiet=args.debounce_quiet, max_delay=args.debounce_max
        )

    async def run(self) -> None:
        http = HttpServer(
            {
                "/healthz": self.healthz,
                "/debug/errors": self.debug_errors,
                "/debug/syncz": self.debug_syncz,
                "/debug/config": self.debug_config,
                "/debug/world": self.debug_world,
            }
        )
        host, port = split_address(self.args.http_address)
        await http.start(host, port)
        grpc_server = await start_grpc(self.xds, self.args.xds_address)
        log.info(
            "meshpilot serving",
            xds=self.args.xds_address,
            http=self.args.http_address,
            config_dir=str(self.args.config_dir),
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            asyncio.create_task(self.debouncer.run()),
            asyncio.create_task(self.watch()),
            asyncio.create_task(self.collect_when_quiet()),
        ]
        await stop.wait()
        log.info("shutting down")
        for t in tasks:
            t.cancel()
        await grpc_server.stop(grace=1)
        await http.close()

    async def watch(self) -> None:
        first = True
        while True:
            try:
                async for result in self.source.changes(force_polling=True if self.args.poll else None):
                    if first:
                        # The first config is applied at once: there is nothing to merge it with.
                        first = False
                        await self.apply(result, 1)
                    else:
                        self.debouncer.submit(result)
            except Exception:
                log.exception("watching the config directory failed; starting over")
                await asyncio.sleep(1)

    async def apply(self, result: LoadResult, merged: int) -> None:
        try:
            applied = self.pipeline.apply(result.resources, result.errors)
        except Exception:
            # Never expected; if it happens, the proxies keep the last config that applied
            # and the next change is tried afresh.
            log.exception("applying the new config failed; the last good config keeps serving")
            return
        self._last_apply = time.monotonic()
        self._report_errors()
        self.ready = True
        log.info(
            "config applied",
            version=applied.version,
            resources=applied.resources,
            changed=applied.changed,
            merged_events=merged,
            streams_notified=applied.streams_notified,
            ms=round(applied.seconds * 1000, 1),
        )

    async def collect_when_quiet(self, every: float = 600.0) -> None:
        """Now and then, once config has been still for a minute, run a full garbage collection."""
        collected_at = time.monotonic()
        while True:
            await asyncio.sleep(60)
            now = time.monotonic()
            if now - collected_at > every and now - self._last_apply > 60:
                full_collection()
                collected_at = now

    @property
    def errors(self) -> tuple[ConfigError, ...]:
        return self.pipeline.errors

    @property
    def world(self) -> World:
        return self.pipeline.world

    def _report_errors(self) -> None:
        """Log each problem once when it appears, and once when it is gone."""
        current = {str(e): e for e in self.errors}
        for text, err in current.items():
            if text not in self._reported:
                emit = log.error if err.severity == "error" else log.warning
                emit("config problem", **err.as_dict())
        for text in self._reported - current.keys():
            log.info("config problem resolved", problem=text)
        self._reported = set(current)
        for severity in ("error", "warning"):
            CONFIG_ERRORS.labels(severity).set(sum(1 for e in current.values() if e.severity == severity))

    # ---------------------------------------------------------------- HTTP pages

    def healthz(self, _q: dict[str, list[str]]) -> Reply:
        return text_reply("ok\n") if self.ready else text_reply("config not loaded yet\n", 503)

    def debug_errors(self, _q: dict[str, list[str]]) -> Reply:
        return json_reply([e.as_dict() for e in self.errors])

    def debug_syncz(self, _q: dict[str, list[str]]) -> Reply:
        return json_reply(sorted((s.as_dict() for s in self.xds.streams.values()), key=lambda s: s["proxy"]))

    def debug_world(self, _q: dict[str, list[str]]) -> Reply:
        return json_reply(
            {"version": self.world.version, "resources": sorted(str(k) for k in self.world.resources)}
        )

    def debug_config(self, q: dict[str, list[str]]) -> Reply:
        """What a connected proxy should have: names and versions per type (``?proxy=<node id>``)."""
        wanted = (q.get("proxy") or [""])[0]
        for proxy in self.cache.proxies():
            if proxy.id == wanted:
                view = self.cache.view(proxy)
                return json_reply(
                    {
                        "proxy": wanted,
                        "generation": view.generation,
                        "types": {
                            short(t): {"version": tv.version, "resources": {r.name: r.version for r in tv.resources()}}
                            for t, tv in view.types.items()
                        },
                    }
                )
        known = sorted({p.id for p in self.cache.proxies()})
        return json_reply({"error": f"no connected proxy {wanted!r}", "connected": known}, 404)

