"""A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
(built by ``scripts/kube-test-cluster.sh``) in a network namespace of their own.

EndpointSlice validation refuses loopback addresses, so pods get ``10.244.x.y`` addresses,
which exist only on the ``lo`` of the test's namespace. Everything that talks to the
cluster runs in that namespace: the cluster's processes and ``kubectl``/``helm`` through
``ip netns exec``, and a test's own code (so meshpilot, Envoys and in-process upstreams
started by the usual fixtures) through ``KubeCluster.entered()``, which moves the calling
thread there (``setns``; threads and processes it starts inherit it).

There is no kubelet and no scheduler: a Pod is given a ``nodeName`` of the cluster's one
(fake) Node, and its IP and readiness are written through the status subresource
(``set_pod_ready``), which is what a kubelet would do. The node lifecycle controller is
off, so nothing marks that Node (or its pods) unreachable.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import ipaddress
import itertools
import json
import os
import re
import secrets
import shlex
import ssl
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

from xds_server.local.processes import ChildProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "kube-test-cluster.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm")
KUBE_VERSION = "v1.36.3"

# Inside the cluster's own network namespace nothing else listens, so fixed ports are safe;
# none is meshpilot's (15010/15014) or Envoy's (15000/15001/15006/...).
ETCD_PORT, ETCD_PEER_PORT, APISERVER_PORT, KCM_PORT = 2379, 2380, 6443, 10257
SERVICE_CIDR = "10.96.0.0/16"
#: The API server's advertised address: the `kubernetes` Service's endpoint must not be loopback.
APISERVER_IP = "10.243.0.1"
POD_PREFIX = "10.244"
NODE_NAME = "meshpilot-test-node"
NETNS_PREFIX = "mpkube"

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


class _HasLog(Protocol):
    def log_tail(self, lines: int = ...) -> str: ...


#: Processes whose log tails tests/kube/conftest.py attaches to a failed test's report.
PROCESSES = pytest.StashKey[list[_HasLog]]()


def track(request: pytest.FixtureRequest, process: _HasLog) -> None:
    """Attach the tail of ``process``'s log to the test's report if it fails."""
    request.node.stash.setdefault(PROCESSES, []).append(process)


class KubeClusterError(RuntimeError):
    """A step of building or starting the cluster failed; the message has the command and its output."""


def cache_dir() -> Path:
    return Path(os.environ.get("MESHPILOT_CACHE") or Path.home() / ".cache" / "meshpilot") / "kube"


def bin_dir() -> Path:
    return cache_dir() / "bin"


def ensure_binaries(progress: Callable[[str], None] = print) -> Path:
    """The directory of the built binaries, running the build script first if one is missing.

    The script's output goes to ``progress`` line by line (a cold build takes minutes).
    """
    binaries = bin_dir()
    if all(os.access(binaries / name, os.X_OK) for name in BINARIES):
        return binaries
    missing = [name for name in BINARIES if not os.access(binaries / name, os.X_OK)]
    progress(f"kube test cluster: {', '.join(missing)} missing in {binaries}; running {BUILD_SCRIPT}")
    tail: list[str] = []
    with subprocess.Popen(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO_ROOT
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            progress(line.rstrip())
            tail = [*tail[-39:], line.rstrip()]
        code = proc.wait()
    if code != 0:
        raise KubeClusterError(f"`bash {BUILD_SCRIPT}` exited with {code}:\n" + "\n".join(tail))
    return binaries


def run(argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0, check: bool = True
        ) -> subprocess.CompletedProcess[str]:
    """Run a command; on failure raise with the exact command line and its output."""
    try:
        done = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise KubeClusterError(f"`{shlex.join(argv)}` timed out after {timeout} s") from e
    if check and done.returncode != 0:
        raise KubeClusterError(
            f"`{shlex.join(argv)}` exited with {done.returncode}:\n{done.stdout}{done.stderr}".rstrip()
        )
    return done


# ---------------------------------------------------------------- network namespaces


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetNamespace:
    """A named network namespace (``ip netns add``) with ``lo`` up."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.path = Path("/run/netns") / name

    def create(self) -> NetNamespace:
        _remove_stale_namespaces()
        run(["ip", "netns", "add", self.name])
        run(["ip", "-n", self.name, "link", "set", "lo", "up"])
        return self

    def delete(self) -> None:
        run(["ip", "netns", "del", self.name], check=False)

    def add_address(self, ip: str) -> None:
        run(["ip", "-n", self.name, "addr", "add", f"{ip}/32", "dev", "lo"])

    def exec_prefix(self) -> list[str]:
        """Prepend to an argv to run it in this namespace."""
        return ["ip", "netns", "exec", self.name]

    @contextlib.contextmanager
    def entered(self) -> Iterator[None]:
        """Move the calling thread into this namespace, and back at the end."""
        with open("/proc/thread-self/ns/net", "rb") as home, open(self.path, "rb") as target:
            _setns(target.fileno())
            try:
                yield
            finally:
                _setns(home.fileno())


def _remove_stale_namespaces() -> None:
    """Namespaces of earlier sessions that died without tearing down (named after their pid)."""
    listing = run(["ip", "netns", "list"], check=False).stdout
    for name in re.findall(rf"^({NETNS_PREFIX}(\d+))\b", listing, re.M):
        if not Path(f"/proc/{name[1]}").exists():
            run(["ip", "netns", "del", name[0]], check=False)


# ---------------------------------------------------------------- certificates and keys


def _write_pki(directory: Path) -> dict[str, Path]:
    """A CA, the API server's serving certificate, and the service account signing key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "meshpilot-test-kube-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    server_key = ec.generate_private_key(ec.SECP256R1())
    first_service_ip = next(ipaddress.IPv4Network(SERVICE_CIDR).hosts())
    names: list[x509.GeneralName] = [
        x509.DNSName(n)
        for n in ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                  "kubernetes.default.svc.cluster.local")
    ]
    names += [x509.IPAddress(ipaddress.IPv4Address(ip)) for ip in ("127.0.0.1", APISERVER_IP)]
    names.append(x509.IPAddress(first_service_ip))
    server = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    sa_key = ec.generate_private_key(ec.SECP256R1())
    files = {
        "ca.crt": ca.public_bytes(serialization.Encoding.PEM),
        "ca.key": key_pem(ca_key),
        "apiserver.crt": server.public_bytes(serialization.Encoding.PEM),
        "apiserver.key": key_pem(server_key),
        "sa.key": key_pem(sa_key),
        "sa.pub": sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    }
    paths = {}
    for name, data in files.items():
        path = directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        paths[name] = path
    return paths


def _kubeconfig(server: str, ca: Path, user: str, token: str) -> dict[str, Any]:
    import base64

    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca.read_bytes()).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": user}}],
        "current-context": "test",
    }


# ---------------------------------------------------------------- the cluster


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager in network namespace ``netns``.

    ``kubeconfig`` (admin, a ``system:masters`` token) points at ``https://127.0.0.1:6443``,
    which answers only inside the namespace.
    """

    def __init__(self, workdir: Path, *, binaries: Path | None = None, name: str | None = None) -> None:
        self.workdir = workdir
        self.bin = binaries or bin_dir()
        self.netns = NetNamespace(name or f"{NETNS_PREFIX}{os.getpid()}")
        self.server = f"https://127.0.0.1:{APISERVER_PORT}"
        self.kubeconfig = workdir / "admin.kubeconfig"
        self.admin_token = secrets.token_hex(16)
        self._kcm_token = secrets.token_hex(16)
        self.pki: dict[str, Path] = {}
        self.etcd: ChildProcess | None = None
        self.apiserver: ChildProcess | None = None
        self.controller_manager: ChildProcess | None = None
        self._pod_ips = itertools.count(10)
        self._ip_lock = threading.Lock()
        # One thread kept in the namespace, for the harness's own HTTP calls.
        self._ns_thread: ThreadPoolExecutor | None = None
        self.started_in: dict[str, float] = {}

    # -- lifecycle

    def start(self, timeout: float = 90.0) -> KubeCluster:
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.netns.create()
        self.netns.add_address(APISERVER_IP)
        self._ns_thread = ThreadPoolExecutor(1, thread_name_prefix="kube-netns", initializer=self._enter_netns)
        self.pki = _write_pki(self.workdir / "pki")
        self._write_credentials()
        self.start_etcd(timeout)
        self.start_apiserver(timeout)
        self.started_in["apiserver"] = time.monotonic() - began
        self.start_controller_manager(timeout)
        self.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE_NAME, "labels": {
                "kubernetes.io/hostname": NODE_NAME}}}))
        self.started_in["ready"] = time.monotonic() - began
        return self

    def stop(self) -> None:
        for child in (self.controller_manager, self.apiserver, self.etcd):
            if child is not None:
                child.stop(10)
        if self._ns_thread is not None:
            self._ns_thread.shutdown(wait=True)
            self._ns_thread = None
        self.netns.delete()

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _enter_netns(self) -> None:
        with open(self.netns.path, "rb") as f:
            _setns(f.fileno())

    def _write_credentials(self) -> None:
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(
            f'{self.admin_token},admin,admin-uid,"system:masters"\n'
            # The controller manager acts for every controller: simplest as a cluster admin.
            f'{self._kcm_token},system:kube-controller-manager,kcm-uid,"system:masters"\n'
        )
        tokens.chmod(0o600)
        self.kubeconfig.write_text(json.dumps(_kubeconfig(self.server, self.pki["ca.crt"], "admin", self.admin_token)))
        (self.workdir / "kcm.kubeconfig").write_text(
            json.dumps(_kubeconfig(self.server, self.pki["ca.crt"], "kcm", self._kcm_token))
        )

    def _child(self, name: str, argv: list[str]) -> ChildProcess:
        """Started from the cluster's own long-lived thread, whichever thread asks: a child dies
        with the thread that forked it (PDEATHSIG), and a test restarting the API server from a
        short-lived worker (``asyncio.to_thread``) would otherwise leave later tests without one."""
        child = ChildProcess(name, [*self.netns.exec_prefix(), *argv], log_path=self.workdir / f"{name}.log",
                             cwd=self.workdir)
        return self.in_netns(child.start)

    def start_etcd(self, timeout: float = 60.0) -> None:
        client = f"http://127.0.0.1:{ETCD_PORT}"
        peer = f"http://127.0.0.1:{ETCD_PEER_PORT}"
        self.etcd = self._child("etcd", [
            str(self.bin / "etcd"), "--name", "test", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}", "--unsafe-no-fsync", "--log-level", "warn",
        ])
        self._wait("etcd", self.etcd, lambda: self._http(f"{client}/health").get("health") == "true", timeout)

    def start_apiserver(self, timeout: float = 60.0) -> None:
        p = self.pki
        self.apiserver = self._child("kube-apiserver", [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{ETCD_PORT}",
            "--bind-address=0.0.0.0", f"--secure-port={APISERVER_PORT}", f"--advertise-address={APISERVER_IP}",
            f"--tls-cert-file={p['apiserver.crt']}", f"--tls-private-key-file={p['apiserver.key']}",
            f"--client-ca-file={p['ca.crt']}", f"--token-auth-file={self.workdir / 'tokens.csv'}",
            "--authorization-mode=RBAC",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p['sa.pub']}", f"--service-account-signing-key-file={p['sa.key']}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--enable-aggregator-routing=true",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--profiling=false",
            # On SIGTERM, end open watches within 2 s instead of waiting for them (a restart takes seconds).
            "--shutdown-watch-termination-grace-period=2s",
        ])
        self._wait("kube-apiserver", self.apiserver, lambda: self._api_text("/readyz") == "ok", timeout)

    def start_controller_manager(self, timeout: float = 60.0) -> None:
        kcm_kubeconfig = self.workdir / "kcm.kubeconfig"
        self.controller_manager = self._child("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={kcm_kubeconfig}",
            f"--authentication-kubeconfig={kcm_kubeconfig}", f"--authorization-kubeconfig={kcm_kubeconfig}",
            "--leader-elect=false", "--bind-address=127.0.0.1", f"--secure-port={KCM_PORT}",
            f"--cert-dir={self.workdir / 'kcm-certs'}",
            # No kubelet heartbeats here: the node lifecycle controller would mark every pod unready.
            "--controllers=*,-node-lifecycle-controller",
            f"--service-account-private-key-file={self.pki['sa.key']}", f"--root-ca-file={self.pki['ca.crt']}",
        ])
        # The service account controller creating `default` shows the controllers run.
        self._wait(
            "kube-controller-manager", self.controller_manager,
            lambda: self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0,
            timeout,
        )

    def ensure_apiserver(self) -> None:
        """Start the API server again if a test stopped it and failed before restarting it."""
        if self.apiserver is not None and not self.apiserver.alive:
            self.start_apiserver()

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Stop the API server and start it again on the same etcd (watches break, data stays)."""
        assert self.apiserver is not None
        self.apiserver.stop(10)
        self.start_apiserver(timeout)

    def _wait(self, what: str, child: ChildProcess, ready: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if not child.alive:
                raise KubeClusterError(
                    f"{what} exited with {child.returncode}: `{shlex.join(child.argv)}`\n{child.log_tail(40)}"
                )
            try:
                if ready():
                    return
            except (OSError, ValueError, KubeClusterError) as e:
                last = e
            time.sleep(0.1)
        raise KubeClusterError(
            f"{what} not ready after {timeout} s (last: {last!r}): `{shlex.join(child.argv)}`\n{child.log_tail(40)}"
        )

    # -- talking to it

    def in_netns(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on a thread inside the cluster's namespace."""
        assert self._ns_thread is not None, "the cluster is not started"
        return self._ns_thread.submit(fn, *args).result()

    def entered(self) -> contextlib.AbstractContextManager[None]:
        """Move the calling thread into the cluster's namespace (and back at the end)."""
        return self.netns.entered()

    def _http(self, url: str) -> Any:
        def get() -> Any:
            with urllib.request.urlopen(url, timeout=2) as r:
                return json.loads(r.read())

        return self.in_netns(get)

    def _api_text(self, path: str) -> str:
        ctx = ssl.create_default_context(cafile=str(self.pki["ca.crt"]))
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.admin_token}"})

        def get() -> str:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as r:
                return str(r.read().decode())

        return self.in_netns(get)

    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60.0
                ) -> subprocess.CompletedProcess[str]:
        """The built kubectl, in the namespace, as the admin."""
        return run([*self.netns.exec_prefix(), str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
                   input=input, check=check, timeout=timeout)

    def helm(self, *args: str, check: bool = True, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        env_dir = self.workdir / "helm"
        argv = [*self.netns.exec_prefix(), "env", f"HELM_CACHE_HOME={env_dir / 'cache'}",
                f"HELM_CONFIG_HOME={env_dir / 'config'}", f"HELM_DATA_HOME={env_dir / 'data'}",
                str(self.bin / "helm"), f"--kubeconfig={self.kubeconfig}", *args]
        return run(argv, check=check, timeout=timeout)

    def apply(self, *manifests: dict[str, Any]) -> None:
        """``kubectl apply`` of manifests given as dicts."""
        self.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(m) for m in manifests))

    def get(self, *args: str) -> Any:
        """``kubectl get ... -o json``, decoded."""
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def create_namespace(self, name: str, timeout: float = 30.0, controller_wait: float = 5.0) -> None:
        """A namespace whose ``default`` ServiceAccount exists (Pods are refused until it does).
        The controller manager makes it within a second, except after a test restarted the API
        server: its watches then took up to two minutes to come back (a run's kcm log), so past
        ``controller_wait`` the ServiceAccount is created here, as that controller would."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        start = time.monotonic()
        created = False
        while self.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode != 0:
            waited = time.monotonic() - start
            if waited > timeout:
                raise KubeClusterError(f"no default ServiceAccount in namespace {name} after {timeout} s")
            if waited > controller_wait and not created:
                created = True  # (AlreadyExists if the controller got there first: fine)
                self.kubectl("create", "serviceaccount", "default", "-n", name, check=False)
            time.sleep(0.1)

    def pod_ip(self) -> str:
        """A fresh 10.244.x.y address, present on the namespace's ``lo`` (bindable by upstreams)."""
        with self._ip_lock:
            n = next(self._pod_ips)
        ip = f"{POD_PREFIX}.{n // 250}.{n % 250 + 2}"
        self.netns.add_address(ip)
        return ip

    def bind_pod(self, namespace: str, name: str) -> None:
        """Bind a Pod made by a controller (a Deployment's) to the one Node, as the scheduler
        would: the EndpointSlice controller skips pods on no Node."""
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": namespace},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME}}
        self.kubectl("create", "--raw", f"/api/v1/namespaces/{namespace}/pods/{name}/binding", "-f", "-",
                     input=json.dumps(binding))

    def set_pod_ready(self, namespace: str, name: str, ip: str, ready: bool = True) -> None:
        """Write what a kubelet would: Running, the pod IP, and the Ready condition."""
        status = "True" if ready else "False"
        patch = {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": APISERVER_IP,
            "conditions": [{"type": "Ready", "status": status}, {"type": "ContainersReady", "status": status}],
        }}
        self.kubectl("patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge",
                     "-p", json.dumps(patch))


def pod_manifest(name: str, namespace: str, labels: dict[str, str], ports: Sequence[int] = (8080,),
                 service_account: str = "default") -> dict[str, Any]:
    """A Pod bound to the cluster's one Node (there is no scheduler)."""
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "nodeName": NODE_NAME,
            "serviceAccountName": service_account,
            "containers": [{"name": "app", "image": "meshpilot.invalid/echo",
                            "ports": [{"containerPort": p} for p in ports]}],
        },
    }


def kube_meshpilot(kubeconfig: Path, *, workdir: Path, extra_args: tuple[str, ...] = (), name: str = "meshpilot",
                   host: str = "127.0.0.1") -> Any:
    """A ``MeshpilotServer`` running ``meshpilot serve --kubeconfig FILE`` instead of ``--config-dir``.

    Start it from a thread inside the cluster's namespace (``KubeCluster.entered()``).
    """
    from harness.meshpilot import MeshpilotServer

    server = MeshpilotServer(kubeconfig, workdir=workdir, extra_args=extra_args, name=name, host=host)
    argv = server._child.argv
    at = argv.index("--config-dir")
    argv[at : at + 2] = ["--kubeconfig", str(kubeconfig)]
    return server


def webhook_service(cluster: KubeCluster, namespace: str, ip: str, port: int, *, service_port: int = 9443,
                    name: str = "meshpilot") -> Callable[[], None]:
    """A Service ``name`` whose EndpointSlice points at ``ip:port`` (meshpilot's webhook port):
    with ``--enable-aggregator-routing`` the API server dials the slice's address, as it has
    no kube-proxy. Returns the function that deletes both (a namespace never finishes
    terminating here, so later tests would see them)."""
    cluster.apply(
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
         "spec": {"ports": [{"name": "https-webhook", "port": service_port, "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-1", "namespace": namespace, "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4",
         # The API server matches the slice's port to the Service's by name.
         "ports": [{"name": "https-webhook", "port": port, "protocol": "TCP"}],
         "endpoints": [{"addresses": [ip], "conditions": {"ready": True}}]},
    )

    def delete() -> None:
        cluster.kubectl("delete", "-n", namespace, f"service/{name}", f"endpointslice/{name}-1",
                        "--ignore-not-found", check=False)

    return delete
