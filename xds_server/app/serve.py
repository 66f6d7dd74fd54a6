"""``meshpilot serve``: watch a directory of manifests and serve them to Envoy over xDS.

source (files) -> debounce -> World -> translator -> cache -> streams.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import structlog

from ca import DEFAULT_TRUST_DOMAIN, DEFAULT_WORKLOAD_TTL, CAError, default_state_dir
from translators.errors import ConfigError
from translators.model.world import World
from xds_server.admission import inject
from xds_server.admission.webhook import WebhookServer, review, ssl_context
from xds_server.app.ca_secret import DEFAULT_SECRET, CASecret
from xds_server.app.config_dump import add_credentials, proxy_config
from xds_server.app.debounce import Debouncer
from xds_server.app.describe import DescribeError, describe
from xds_server.app.httpd import HttpServer, Reply, json_reply, text_reply
from xds_server.app.leader import DEFAULT_LEASE, LEASE_DURATION, RETRY_PERIOD, LeaseElector
from xds_server.app.mesh_ca import MeshCA, server_names
from xds_server.app.node import proxy_as_dict
from xds_server.app.pipeline import Pipeline
from xds_server.app.verbs.common import client_version
from xds_server.heap import full_collection, release_free_memory, tune_collector
from xds_server.sources.files import RESCAN_EVERY, DirectorySource, LoadResult
from xds_server.sources.kubernetes import KubernetesSource, _api_client
from xds_server.xds.server import XdsServer, start_grpc
from xds_server.xds.status import CONFIG_ERRORS, RESCANS, WATCH_FAILURES, WATCHING, short
from xds_server.xds.tokenreview import TokenReviewer, kube_review_call

log = structlog.get_logger("meshpilot")

#: Where a pod's own namespace is mounted (with its ServiceAccount token).
IN_CLUSTER_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def add_arguments(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-dir", type=Path, help="directory of Kubernetes/Istio YAML manifests")
    source.add_argument("--kubeconfig", type=Path, metavar="FILE",
                        help="watch the cluster of this kubeconfig (its current context) instead")
    source.add_argument("--in-cluster", action="store_true",
                        help="watch the cluster this runs in, as its pod's ServiceAccount (the Helm chart's way)")
    p.add_argument("--xds-address", default="127.0.0.1:15010",
                   help="plaintext xDS gRPC listen address (HOST:PORT): config only, never a secret")
    p.add_argument("--xds-tls-address", default="127.0.0.1:15012",
                   help="TLS xDS gRPC listen address (HOST:PORT), where proxies that prove their identity "
                   "also get their certificates over SDS; 'off' to serve no TLS port")
    p.add_argument("--xds-tls-san", action="append", default=[], metavar="NAME",
                   help="another DNS name or IP for the TLS port's certificate (repeatable)")
    p.add_argument("--ca-state", type=Path, default=None, metavar="DIR",
                   help="the CA's private state directory (root, token key), shared with `meshpilot bootstrap` "
                   f"(default: {default_state_dir()})")
    p.add_argument("--cacerts", type=Path, default=None, metavar="DIR",
                   help="sign with a plugged-in CA laid out like Istio's cacerts (ca-cert.pem, ca-key.pem, "
                   "cert-chain.pem, root-cert.pem) instead of the self-signed root in --ca-state")
    p.add_argument("--ca-secret", default=DEFAULT_SECRET, metavar="NAME",
                   help="Kubernetes mode: the Secret every replica shares the CA root (and token key) through, "
                   "created once by the elected leader; 'off' keeps the root in --ca-state only "
                   f"(default {DEFAULT_SECRET})")
    p.add_argument("--ca-secret-namespace", default=None, metavar="NS",
                   help="namespace of --ca-secret and the leader Lease (default: the pod's own with --in-cluster, "
                   "else --namespace)")
    p.add_argument("--leader-elect-lease", default=DEFAULT_LEASE, metavar="NAME",
                   help=f"the coordination.k8s.io Lease replicas elect a leader with (default {DEFAULT_LEASE})")
    p.add_argument("--leader-elect-lease-duration", type=float, default=LEASE_DURATION, metavar="SECONDS",
                   help="a leader not heard of for this long is replaced (default %(default)g)")
    p.add_argument("--leader-elect-renew-deadline", type=float, default=None, metavar="SECONDS",
                   help="a leader that could not renew for this long stops leading (default 2/3 of the duration)")
    p.add_argument("--leader-elect-retry-period", type=float, default=RETRY_PERIOD, metavar="SECONDS",
                   help="how often replicas try to take or renew the Lease (default %(default)g)")
    p.add_argument("--workload-cert-ttl", type=float, default=DEFAULT_WORKLOAD_TTL.total_seconds(),
                   metavar="SECONDS", help="lifetime of workload certificates; renewed at half life (default 24 h)")
    p.add_argument("--http-address", default="127.0.0.1:15014", help="health, metrics and debug (HOST:PORT)")
    p.add_argument("--webhook-address", default="off", metavar="HOST:PORT",
                   help="serve the validating admission webhook (HTTPS, POST /validate) here; default off")
    p.add_argument("--webhook-san", action="append", default=[], metavar="NAME",
                   help="a name the API server dials the webhook by (default: meshpilot.<--namespace>.svc)")
    p.add_argument("--inject-xds-address", default="off", metavar="HOST:PORT",
                   help="also serve the sidecar injection webhook (POST /inject) on --webhook-address; injected "
                   "proxies dial meshpilot's TLS xDS port at this address (e.g. meshpilot.istio-system.svc:15012)")
    p.add_argument("--inject-proxy-image", default=inject.DEFAULT_PROXY_IMAGE, help="the injected sidecar's image")
    p.add_argument("--inject-init-image", default=inject.DEFAULT_INIT_IMAGE,
                   help="the injected init containers' image (meshpilot and iptables)")
    p.add_argument("--inject-xds-api", choices=("delta", "sotw"), default="delta",
                   help="the xDS protocol injected proxies speak (default delta, as Istio's; a pod's "
                   "proxy.istio.io/config proxyMetadata ISTIO_DELTA_XDS overrides it)")
    p.add_argument("--token-review-ttl", type=float, default=10.0, metavar="SECONDS",
                   help="Kubernetes mode: how long a TokenReview's answer is reused for the same token (a deleted "
                   "pod's token keeps working for new streams at most this long)")
    p.add_argument("--namespace", default="default", help="namespace of manifests that name none")
    p.add_argument("--debounce-quiet", type=float, default=0.1, metavar="SECONDS", help="a burst of changes is pushed after this much quiet (a lone change goes at once)")
    p.add_argument("--debounce-max", type=float, default=10.0, metavar="SECONDS", help="push at the latest after this")
    p.add_argument("--poll", action="store_true", help="poll the directory instead of using inotify")
    p.add_argument("--vhds", choices=("on", "off"), default="on",
                   help="delta xDS Envoys get each route configuration as a stub plus its virtual hosts over VHDS, "
                   "so a VirtualService edit sends only the virtual hosts it changed (SotW clients always get "
                   "whole route tables); off: whole tables for every client (default on)")
    p.add_argument(
        "--rescan-interval",
        type=float,
        default=RESCAN_EVERY,
        metavar="SECONDS",
        help=f"rescan the whole directory this often, for changes the watcher missed; 0: never "
        f"(default {RESCAN_EVERY:g})",
    )
    p.add_argument("--log-format", choices=("auto", "json", "console"), default="auto")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))


def run(args: argparse.Namespace) -> int:
    configure_logging(args.log_format, args.log_level)
    if args.config_dir is not None and not args.config_dir.is_dir():
        log.error("config directory not found", path=str(args.config_dir))
        return 2
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        log.error("kubeconfig not found", path=str(args.kubeconfig))
        return 2
    if getattr(args, "in_cluster", False) and not os.environ.get("KUBERNETES_SERVICE_HOST"):
        log.error("--in-cluster outside a Kubernetes pod (KUBERNETES_SERVICE_HOST is not set)")
        return 2
    try:
        asyncio.run(ControlPlane(args).run())
    except (OSError, CAError) as e:
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


def shared_root(args: argparse.Namespace, state_dir: Path) -> tuple[LeaseElector, CASecret]:
    """The Lease elector and the CA root Secret of ``serve --kubeconfig/--in-cluster``."""
    namespace = args.ca_secret_namespace
    if not namespace:
        pod_ns = Path(IN_CLUSTER_NAMESPACE)
        namespace = pod_ns.read_text().strip() if getattr(args, "in_cluster", False) and pod_ns.is_file() \
            else args.namespace
    api = _api_client(args.kubeconfig, None)
    try:
        elector = LeaseElector(api, namespace, args.leader_elect_lease, lease_duration=args.leader_elect_lease_duration,
                               renew_deadline=args.leader_elect_renew_deadline,
                               retry_period=args.leader_elect_retry_period)
    except ValueError as e:
        raise CAError(f"--leader-elect-*: {e}") from None
    return elector, CASecret(api, namespace, args.ca_secret, state_dir, elector, trust_domain=DEFAULT_TRUST_DOMAIN)


class ControlPlane:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.source: DirectorySource | KubernetesSource = (
            KubernetesSource(args.kubeconfig)
            if args.kubeconfig is not None or getattr(args, "in_cluster", False)
            else DirectorySource(args.config_dir, default_namespace=args.namespace)
        )
        self.pipeline = Pipeline()
        tune_collector()
        self.cache = self.pipeline.cache
        if args.workload_cert_ttl <= 0:
            raise CAError(f"--workload-cert-ttl must be positive, not {args.workload_cert_ttl}")
        state_dir = args.ca_state or default_state_dir()
        self.elector: LeaseElector | None = None
        self.ca_secret: CASecret | None = None
        if isinstance(self.source, KubernetesSource) and args.cacerts is None and args.ca_secret != "off":
            # Before any serving: the root every replica signs with comes from the shared Secret.
            self.elector, self.ca_secret = shared_root(args, state_dir)
            self.ca_secret.ensure()
        self.mesh_ca = MeshCA(state_dir, cacerts=args.cacerts,
                              workload_ttl=timedelta(seconds=args.workload_cert_ttl))
        if isinstance(self.source, KubernetesSource):
            # Pods prove who they are with their service-account token, checked by the API server.
            self.mesh_ca.secrets.reviewer = TokenReviewer(kube_review_call(_api_client(args.kubeconfig, None)),
                                                          ttl=args.token_review_ttl)
        self.xds = XdsServer(self.cache, self.mesh_ca.secrets, self.pipeline.convergence, self.pipeline.credentials,
                             vhds=getattr(args, "vhds", "on") == "on")
        self.ready = False
        self._loaded = asyncio.Event()  # set once the first config is applied
        self.serving = False  # the xDS ports are open (after the first config)
        # What keeps config from following the files ("watcher", or a task that ended): why.
        self.failures: dict[str, str] = {}
        if self.mesh_ca.state_problem is not None:
            self.failures["ca-state"] = self.mesh_ca.state_problem
        self._last_apply = 0.0
        self._applied_result: LoadResult | None = None  # what the pipeline serves: the base of the next change
        self._reported: set[str] = set()
        self.debouncer: Debouncer[LoadResult] = Debouncer(
            self.apply, quiet=args.debounce_quiet, max_delay=args.debounce_max
        )

    @property
    def source_name(self) -> str:
        return str(self.args.config_dir or self.args.kubeconfig or "in-cluster")

    async def run(self) -> None:
        http = HttpServer(
            {
                "/healthz": self.healthz,
                "/debug/errors": self.debug_errors,
                "/debug/syncz": self.debug_syncz,
                "/debug/pushes": self.debug_pushes,
                "/debug/config": self.debug_config,
                "/debug/proxies": self.debug_proxies,
                "/debug/describe": self.debug_describe,
                "/debug/world": self.debug_world,
                "/debug/ca": self.debug_ca,
                # Only where there is an election (Kubernetes mode): the index lists what answers.
                **({"/debug/leader": self.debug_leader} if self.elector is not None else {}),
                "/version": self.version,
            }
        )
        host, port = split_address(self.args.http_address)
        await http.start(host, port)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        tasks = [
            *([asyncio.create_task(self.elector.run(), name="leader-election")] if self.elector else []),
            *([asyncio.create_task(self.ca_secret.follow(), name="ca-secret")] if self.ca_secret else []),
            asyncio.create_task(self.debouncer.run(), name="debouncer"),
            asyncio.create_task(self.watch(), name="watcher"),
            asyncio.create_task(self.collect_when_quiet(), name="collector"),
        ]
        for t in tasks:
            t.add_done_callback(self._task_ended)
        webhook = await self.start_webhook()  # validation needs no config: not held back
        # No xDS before the first config is applied: a proxy reconnecting to a restarted
        # control plane would be answered with an empty world and drop its listeners.
        loaded, stopping = asyncio.create_task(self._loaded.wait()), asyncio.create_task(stop.wait())
        await asyncio.wait((loaded, stopping), return_when=asyncio.FIRST_COMPLETED)
        loaded.cancel()
        stopping.cancel()
        servers: list[grpc.aio.Server] = []
        if not stop.is_set():
            servers.append(await start_grpc(self.xds, self.args.xds_address))
            tls_address = self.args.xds_tls_address
            if tls_address and tls_address != "off":
                tls_host, _ = split_address(tls_address)
                credentials = self.mesh_ca.server_credentials(tls_host, self.args.xds_tls_san)
                servers.append(await start_grpc(self.xds, tls_address, credentials))
            # After the serving certificate is issued: its renewal is one of this task's jobs.
            tasks.append(asyncio.create_task(self.mesh_ca.run(), name="certificates"))
            tasks[-1].add_done_callback(self._task_ended)
            self.serving = True
            log.info(
                "meshpilot serving",
                xds=self.args.xds_address,
                xds_tls=tls_address if len(servers) > 1 else None,
                http=self.args.http_address,
                config_dir=self.source_name,
            )
        await stop.wait()
        log.info("shutting down")
        for t in tasks:
            t.cancel()
        for server in servers:
            await server.stop(grace=1)
        self.mesh_ca.close()
        await http.close()
        if webhook is not None:
            await webhook.close()

    async def start_webhook(self) -> WebhookServer | None:
        address = self.args.webhook_address
        if not address or address == "off":
            return None
        host, port = split_address(address)
        dns, ips = server_names(host, self.args.webhook_san or [f"meshpilot.{self.args.namespace}.svc"])
        # Not renewed yet (30-day TTL), unlike the xDS port's certificate: a later step.
        cert = self.mesh_ca.ca.server_certificate(dns, ip_addresses=ips)
        routes: dict[str, Any] = {"/validate": review}
        inject_address = self.args.inject_xds_address
        if inject_address and inject_address != "off":
            split_address(inject_address)  # exits on a malformed address
            config = inject.InjectConfig(
                xds_address=inject_address, root_pem=self.mesh_ca.ca.trust_bundle(),
                proxy_image=self.args.inject_proxy_image, init_image=self.args.inject_init_image,
                delta=self.args.inject_xds_api == "delta")

            def inject_review(body: Any) -> dict[str, Any]:
                # The roots of now: during a root rotation, new pods trust the old and the new.
                return inject.review(body, replace(config, root_pem=self.mesh_ca.ca.trust_bundle()))

            routes["/inject"] = inject_review
        webhook = WebhookServer(ssl_context(cert), routes)
        await webhook.start(host, port)
        log.info("admission webhook serving", address=address, names=dns + ips, paths=sorted(routes))
        return webhook

    async def watch(self) -> None:
        first = True
        restarted = False
        WATCHING.set(1)
        while True:
            try:
                async for result in self.source.changes(
                    force_polling=True if self.args.poll else None,
                    rescan_every=self.args.rescan_interval,
                    on_failure=self._watch_failed,
                    on_recovery=self._watch_recovered,
                    on_rescan=self._rescanned,
                ):
                    if restarted:
                        restarted = False
                        self._watch_recovered()
                    if first:
                        # The first config is applied at once: there is nothing to merge it with.
                        first = False
                        await self.apply(result, 1)
                    else:
                        self.debouncer.submit(result)
            except Exception as e:  # changes() handles its own failures: this is a bug, but survive it
                log.exception("watching the config source failed; starting over")
                self._watch_failed(f"{type(e).__name__}: {e}", 1.0)
                restarted = True
                await asyncio.sleep(1)

    def _watch_failed(self, why: str, retry_in: float) -> None:
        WATCH_FAILURES.inc()
        WATCHING.set(0)
        what = "the config directory" if self.args.config_dir is not None else "the Kubernetes API"
        meanwhile = "scanning it every second meanwhile, " if self.args.config_dir is not None else ""
        self.failures["watcher"] = f"watching {what} failed: {why}; {meanwhile}retrying in {retry_in:g} s"
        self._count_errors()
        log.error("config watcher failed", error=why, retry_in_s=retry_in)

    def _watch_recovered(self) -> None:
        WATCHING.set(1)
        if self.failures.pop("watcher", None) is not None:
            self._count_errors()
            log.info("config watcher running again")

    def _rescanned(self, result: LoadResult, changed: bool) -> None:
        RESCANS.labels("changed" if changed else "unchanged").inc()
        if changed:
            files = sorted(result.changed_files)
            log.warning("periodic rescan found changes the watcher had not reported", files=files)

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        why = f"{type(error).__name__}: {error}" if error else "returned"
        name = task.get_name()
        self.failures[name] = f"the {name} task ended ({why}); config no longer follows the files"
        self._count_errors()
        log.error("control plane task ended", task=name, error=why)

    async def apply(self, result: LoadResult, merged: int) -> None:
        try:
            before = self._applied_result
            since = (before.resources, result.changes_since(before)) if before is not None else None
            applied = self.pipeline.apply(result.resources, result.errors, since)
            self._applied_result = result
        except Exception:
            # Never expected; if it happens, the proxies keep the last config that applied
            # and the next change is tried afresh.
            log.exception("applying the new config failed; the last good config keeps serving")
            return
        self._last_apply = time.monotonic()
        self._report_errors()
        self.ready = True
        self._loaded.set()
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
        """Now and then, once config has been still for a minute, run a full garbage collection;
        every half minute, give the C heap's free pages back (a few ms)."""
        collected_at = time.monotonic()
        while True:
            await asyncio.sleep(30)
            now = time.monotonic()
            if now - collected_at > every and now - self._last_apply > 60:
                full_collection()
                collected_at = now
            release_free_memory()

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
        self._count_errors()

    def _count_errors(self) -> None:
        """``meshpilot_config_errors``: what /debug/errors lists, failures (watcher, CA state) as errors."""
        errors = self.errors
        CONFIG_ERRORS.labels("error").set(len(self.failures) + sum(1 for e in errors if e.severity == "error"))
        CONFIG_ERRORS.labels("warning").set(sum(1 for e in errors if e.severity == "warning"))

    # ---------------------------------------------------------------- HTTP pages

    def healthz(self, _q: dict[str, list[str]]) -> Reply:
        if not self.ready or not self.serving:
            return text_reply("config not loaded yet\n", 503)
        if self.failures:
            return text_reply("".join(f"degraded: {why}\n" for _, why in sorted(self.failures.items())), 503)
        return text_reply("ok\n")

    def debug_errors(self, _q: dict[str, list[str]]) -> Reply:
        failures = [
            ConfigError(self.source_name, "", "", why) for _, why in sorted(self.failures.items())
        ]
        return json_reply([e.as_dict() for e in (*failures, *self.errors, *self.nack_errors())])

    def nack_errors(self) -> list[ConfigError]:
        """Each proxy's standing NACK (its last response of a type was rejected), tied back to the
        resources of the change that response carried: one entry per resource, at its file."""
        out = []
        for status in self.xds.streams.values():
            for type_url, st in status.types.items():
                nack = st.nack
                if nack is None or nack["nonce"] != st.sent_nonce:
                    continue  # settled: a later response went out
                what = f"{short(type_url)} rejected by proxy {status.proxy_id}"
                message = f"Envoy rejected config version {nack['version']}: {nack['message']}"
                blamed = nack.get("resources") or [("", "")]
                out += [ConfigError(source, resource, what, message) for resource, source in blamed]
        return out

    def debug_syncz(self, _q: dict[str, list[str]]) -> Reply:
        return json_reply(self.xds.syncz())

    def debug_pushes(self, _q: dict[str, list[str]]) -> Reply:
        return json_reply(self.pipeline.convergence.as_list())

    def debug_ca(self, _q: dict[str, list[str]]) -> Reply:
        """The CA, the xDS serving certificate and each identity's certificate: names and dates only."""
        return json_reply(self.mesh_ca.describe())

    def debug_leader(self, _q: dict[str, list[str]]) -> Reply:
        """Kubernetes mode: this replica's view of the leader Lease and of the CA root Secret."""
        if self.elector is None or self.ca_secret is None:
            return json_reply({"error": "no leader election: not in Kubernetes mode, --cacerts, or --ca-secret off"},
                              404)
        return json_reply({**self.elector.describe(), "ca_secret": self.ca_secret.describe()})

    def debug_world(self, _q: dict[str, list[str]]) -> Reply:
        return json_reply(
            {"version": self.world.version, "resources": sorted(str(k) for k in self.world.resources)}
        )

    def version(self, _q: dict[str, list[str]]) -> Reply:
        return json_reply({"version": client_version(), "http_address": self.args.http_address})

    def debug_proxies(self, _q: dict[str, list[str]]) -> Reply:
        """Each connected proxy as translation sees it (node metadata, verified identity): `meshpilot diff`
        translates a new config for exactly these."""
        return json_reply(sorted((proxy_as_dict(p) for p in self.cache.proxies()), key=lambda d: str(d["id"])))

    def debug_describe(self, q: dict[str, list[str]]) -> Reply:
        """`meshpilot describe`: ``?kind=pod|service&name=&namespace=``, from this world and its registry."""
        def arg(name: str, default: str = "") -> str:
            return (q.get(name) or [default])[0]

        try:
            found = describe(self.pipeline, arg("kind"), arg("name"), arg("namespace", "default"),
                             self.xds.syncz(), self.cache.proxies())
        except DescribeError as e:
            return json_reply({"error": str(e)}, 404)
        return json_reply(found)

    def debug_config(self, q: dict[str, list[str]]) -> Reply:
        """What a connected proxy should have (``?proxy=<node id>``): per type, names and versions,
        and each resource in Envoy's JSON (secrets: names and certificate dates only)."""
        wanted = (q.get("proxy") or [""])[0]
        for proxy in self.cache.proxies():
            if proxy.id == wanted:
                proved = {s["security"].get("identity") for s in self.xds.syncz() if s["proxy"] == wanted}
                described = self.mesh_ca.secrets.describe()
                secrets = [d for d in described if isinstance(d, dict) and d.get("identity") in proved]
                roots = self.mesh_ca.ca.describe().get("roots") if secrets else None
                dumped = proxy_config(wanted, self.xds.config_view(proxy), secrets, roots)
                if proxy.role == "gateway" and secrets:  # its credentials: names and versions only
                    add_credentials(dumped, self.pipeline.credentials.describe(proxy.namespace))
                return json_reply(dumped)
        known = sorted({p.id for p in self.cache.proxies()})
        return json_reply({"error": f"no connected proxy {wanted!r}", "connected": known}, 404)

