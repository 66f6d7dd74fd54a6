"""A real Docker daemon and a real ``docker compose`` for tests.

``DockerHost.ensure()`` uses the daemon that answers, or starts ``dockerd`` itself (root
only), in which case ``stop()`` stops it and removes what a daemon leaves on the host:
its iptables chains and rules, ``docker0``, and ``ip_forward=1``. Packages, base images
and the compose plugin come from ``scripts/docker-test-env.sh`` (cached outside the repo).

``Compose`` runs ``docker compose`` on the repo's ``docker-compose.yml`` with the
environment it is given, and reports what a project left behind: containers, networks,
and iptables lines that name its subnet or bridge.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from xds_server.local.processes import ChildProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_SCRIPT = REPO_ROOT / "scripts" / "docker-test-env.sh"
_TABLES = ("filter", "nat")
_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")


class DockerUnavailable(Exception):
    """No Docker daemon can run here (the reason says why): the only reason to skip."""


def run(argv: Sequence[str], *, env: Mapping[str, str] | None = None, timeout: float = 600,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), env=dict(env) if env is not None else None, cwd=REPO_ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


def docker_answers() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=20, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def iptables_rules() -> dict[str, list[str]]:
    """``iptables-save`` per table: chain declarations (``:NAME``) and rules (``-A ...``)."""
    out: dict[str, list[str]] = {}
    for table in _TABLES:
        text = run(["iptables-save", "-t", table], check=False).stdout
        out[table] = [line.split(" [")[0] if line.startswith(":") else line
                      for line in text.splitlines() if line.startswith((":", "-A"))]
    return out


def _script(args: Sequence[str], progress: Callable[[str], None]) -> None:
    """Runs scripts/docker-test-env.sh, passing its progress lines on as they come."""
    proc = subprocess.Popen(["bash", str(ENV_SCRIPT), *args], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        progress(line.rstrip())
    if proc.wait() != 0:
        raise RuntimeError(f"{ENV_SCRIPT.name} {' '.join(args)} failed:\n" + "\n".join(lines[-20:]))


@contextlib.contextmanager
def machine_lock(what: str, progress: Callable[[str], None] = print) -> Iterator[None]:
    """One holder at a time per machine: two test runs must not share (or stop) one daemon, or
    take down each other's stack (the compose project and its subnet are fixed)."""
    path = Path(os.environ.get("MESHPILOT_CACHE") or Path.home() / ".cache" / "meshpilot") / "docker" / f"{what}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            progress(f"waiting for another test run to release {path}")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class DockerHost:
    def __init__(self, log_dir: Path, progress: Callable[[str], None] = print) -> None:
        self.log_dir = log_dir
        self.progress = progress
        self.daemon: ChildProcess | None = None
        self._rules_before: dict[str, list[str]] = {}
        self._ip_forward_before = ""

    def ensure(self) -> None:
        """A daemon that answers, the base images and the compose plugin, or DockerUnavailable."""
        if not docker_answers():
            if os.geteuid() != 0:
                raise DockerUnavailable("no Docker daemon answers, and only root can start one")
            if shutil.which("dockerd") is None or shutil.which("debootstrap") is None:
                if shutil.which("apt-get") is None:
                    raise DockerUnavailable("dockerd is not installed and there is no apt-get to install it")
                _script(["--packages"], self.progress)
            self._start_daemon()
        _script(["--no-daemon"], self.progress)

    def _start_daemon(self) -> None:
        self._rules_before = iptables_rules()
        self._ip_forward_before = _IP_FORWARD.read_text().strip()
        self.progress("starting dockerd for this test run")
        self.daemon = ChildProcess("dockerd", ["dockerd"], log_path=self.log_dir / "dockerd.log").start()
        deadline = time.monotonic() + 30
        while not docker_answers():
            if not self.daemon.alive or time.monotonic() > deadline:
                tail = self.daemon.log_tail(20)
                self.stop()
                raise RuntimeError(f"dockerd did not come up:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stops the daemon this host started, then removes what it left behind; else nothing."""
        if self.daemon is None:
            return
        self.daemon.stop(timeout=30)
        self.daemon = None
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        after = iptables_rules()
        for table in _TABLES:
            before = set(self._rules_before.get(table, []))
            for rule in reversed(after[table]):  # rules first, jumps into docker's chains among them
                if rule.startswith("-A") and rule not in before:
                    run(["iptables", "-t", table, "-D", *rule.split()[1:]], check=False)
            for chain in after[table]:
                if chain.startswith(":") and chain not in before:
                    name, policy = chain[1:].split()[:2]
                    if policy == "-":  # a chain of docker's own
                        run(["iptables", "-t", table, "-F", name], check=False)
                        run(["iptables", "-t", table, "-X", name], check=False)
                    else:  # a built-in chain whose policy docker changed (FORWARD DROP)
                        old = next((c for c in before if c.split()[0] == f":{name}"), None)
                        if old is not None:
                            run(["iptables", "-t", table, "-P", name, old.split()[1]], check=False)
        if Path("/sys/class/net/docker0").exists():
            run(["ip", "link", "delete", "docker0"], check=False)
        if self._ip_forward_before:
            _IP_FORWARD.write_text(self._ip_forward_before + "\n")

    def leftovers(self) -> list[str]:
        """What a daemon this host started and stopped left behind (empty when clean)."""
        found = []
        after = iptables_rules()
        for table in _TABLES:
            before = set(self._rules_before.get(table, []))
            found += [f"iptables -t {table}: {r}" for r in after[table] if r not in before]
        if Path("/sys/class/net/docker0").exists():
            found.append("the docker0 interface")
        return found


class Compose:
    """``docker compose`` on the repo's docker-compose.yml, for one project."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = {**os.environ, **env}
        self.log_dir = log_dir
        self.project = self.config_value("name")

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = run(["docker", "compose", *args], env=self.env, timeout=timeout, check=check)
        with open(self.log_dir / "compose.log", "a", encoding="utf-8") as log:
            log.write(f"$ docker compose {' '.join(args)}\n{proc.stdout}\n")
        return proc

    def config_value(self, key: str) -> str:
        return str(json.loads(run(["docker", "compose", "config", "--format", "json"], env=self.env).stdout)[key])

    def logs(self, tail: int = 40) -> str:
        return self("logs", "--no-color", "--tail", str(tail), check=False).stdout

    def containers(self) -> list[str]:
        return run(["docker", "ps", "-a", "-q", "--filter", f"label=com.docker.compose.project={self.project}"],
                   ).stdout.split()

    def networks(self) -> dict[str, str]:
        """Network id -> its Linux bridge name, for this project's networks."""
        ids = run(["docker", "network", "ls", "-q", "--no-trunc",
                   "--filter", f"label=com.docker.compose.project={self.project}"]).stdout.split()
        return {i: f"br-{i[:12]}" for i in ids}

    def leftovers(self, subnet_prefix: str, bridges: Sequence[str]) -> list[str]:
        """Containers, networks, bridges and iptables lines of this project still on the host."""
        found = [f"container {c}" for c in self.containers()]
        found += [f"network {n}" for n in self.networks()]
        found += [f"interface {b}" for b in bridges if Path(f"/sys/class/net/{b}").exists()]
        for table, rules in iptables_rules().items():
            found += [f"iptables -t {table}: {r}" for r in rules
                      if subnet_prefix in r or any(b in r for b in bridges)]
        return found
