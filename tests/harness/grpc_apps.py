"""Proxyless gRPC applications for the tests: a greeter server and an xDS client, each a
real grpcio process of its own (gRPC's xDS bootstrap is process-wide, read from the
environment), defined without generated code: raw-bytes methods on a generic handler.

    python tests/harness/grpc_apps.py server --ip IP --port PORT --pod NAME [--version V] [--xds]
    python tests/harness/grpc_apps.py client        # commands as JSON lines on stdin

The server answers ``/helloworld.Greeter/SayHello`` with JSON: its pod, version and the
request metadata it saw. A call with metadata ``x-flaky: <id>`` fails UNAVAILABLE on its
first attempt and succeeds on the next ones (per id), so retries can be told from luck;
``x-fail: <code>`` always fails with that status. Only a server without ``--xds`` fails
in a way a client can retry (see ``fail`` in ``serve``).

With ``--xds`` the server is xDS-enabled (``GRPC_XDS_BOOTSTRAP``): it serves only once
the control plane has sent its inbound listener.

The client runs calls on channels to ``xds:///...`` targets as told: ``calls`` (a batch;
counts by pod and by status code) and ``loop_start``/``loop_stop`` (calls in a background
thread until stopped, e.g. while the config changes).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from concurrent import futures
from pathlib import Path
from typing import Any

SERVICE = "helloworld.Greeter"
METHOD = f"/{SERVICE}/SayHello"
HERE = Path(__file__).resolve()


def _identity(b: bytes) -> bytes:
    return b


# ---------------------------------------------------------------- the server process


def serve(ip: str, port: int, pod: str, version: str, xds: bool) -> None:
    import grpc

    attempts: dict[str, int] = collections.Counter()
    lock = threading.Lock()

    def fail(context: Any, code: Any, details: str) -> bytes:
        if not xds:
            context.abort(code, details)  # a trailers-only answer: the client may retry it
        # grpcio 1.85's xDS-enabled server aborts its process on a trailers-only answer (a
        # C-core check in pipe.h fails); an error after headers is one no client retries.
        context.set_code(code)
        context.set_details(details)
        return b""

    def say_hello(request: bytes, context: Any) -> bytes:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        if md.get("x-fail"):
            return fail(context, getattr(grpc.StatusCode, md["x-fail"].upper()), f"{pod}: failing as asked")
        flaky = md.get("x-flaky")
        if flaky:
            with lock:
                attempts[flaky] += 1
                first = attempts[flaky] == 1
            if first:
                return fail(context, grpc.StatusCode.UNAVAILABLE, f"{pod}: first attempt of {flaky} fails")
        return json.dumps({"pod": pod, "version": version, "metadata": md}).encode()

    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "SayHello": grpc.unary_unary_rpc_method_handler(
            say_hello, request_deserializer=_identity, response_serializer=_identity)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=(handler,), xds=xds)
    if server.add_insecure_port(f"{ip}:{port}") == 0:
        raise SystemExit(f"cannot listen on {ip}:{port}")
    server.start()
    print(f"greeter {pod} listening on {ip}:{port} (xds={xds})", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0.5).wait()


# ---------------------------------------------------------------- the client process


class _Caller:
    def __init__(self) -> None:
        import grpc

        self.grpc = grpc
        self.channels: dict[str, Any] = {}
        self.loop: threading.Thread | None = None
        self.loop_stop = threading.Event()
        self.loop_result: dict[str, Any] = {}

    def _stub(self, target: str) -> Any:
        channel = self.channels.get(target)
        if channel is None:
            channel = self.channels[target] = self.grpc.insecure_channel(target)
        return channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)

    def call(self, target: str, metadata: Mapping[str, str], timeout: float, result: dict[str, Any],
             wait_for_ready: bool = False, flaky: str = "") -> None:
        md = list(metadata.items()) + ([("x-flaky", flaky)] if flaky else [])
        try:
            body = json.loads(self._stub(target)(b"hi", metadata=md, timeout=timeout, wait_for_ready=wait_for_ready))
            result["ok"][body["pod"]] = result["ok"].get(body["pod"], 0) + 1
        except self.grpc.RpcError as e:
            code = e.code().name if e.code() is not None else "UNKNOWN"
            result["errors"][code] = result["errors"].get(code, 0) + 1
            if len(result["details"]) < 5:
                result["details"].append(f"{code}: {e.details()}")

    def calls(self, cmd: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"ok": {}, "errors": {}, "details": []}
        for i in range(cmd.get("n", 1)):
            flaky = f"{cmd['flaky']}-{i}" if cmd.get("flaky") else ""
            self.call(cmd["target"], cmd.get("metadata", {}), cmd.get("timeout", 5.0), result,
                      cmd.get("wait_for_ready", False), flaky)
        return result

    def loop_start(self, cmd: dict[str, Any]) -> dict[str, Any]:
        self.loop_stop.clear()
        self.loop_result = result = {"ok": {}, "errors": {}, "details": []}

        def run() -> None:
            while not self.loop_stop.is_set():
                self.call(cmd["target"], cmd.get("metadata", {}), cmd.get("timeout", 5.0), result)
                time.sleep(cmd.get("pause", 0.005))

        self.loop = threading.Thread(target=run, daemon=True)
        self.loop.start()
        return {"started": True}

    def loop_stop_(self, _cmd: dict[str, Any]) -> dict[str, Any]:
        self.loop_stop.set()
        if self.loop is not None:
            self.loop.join(30)
        return self.loop_result


def client() -> None:
    caller = _Caller()
    ops = {"calls": caller.calls, "loop_start": caller.loop_start, "loop_stop": caller.loop_stop_}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            out = ops[cmd["op"]](cmd)
        except Exception as e:  # report, keep serving commands
            out = {"exception": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- for the tests


def _env(bootstrap: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_XDS_BOOTSTRAP")}
    if bootstrap is not None:
        env["GRPC_XDS_BOOTSTRAP"] = str(bootstrap)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start(argv: list[str], env: dict[str, str], log: Path, interactive: bool) -> subprocess.Popen[str]:
    from xds_server.local.processes import _die_with_parent

    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, str(HERE), *argv], env=env, text=True, start_new_session=True,
            preexec_fn=_die_with_parent, stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
            stdout=subprocess.PIPE if interactive else err, stderr=err)


def _stop(proc: subprocess.Popen[str], timeout: float = 5.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    for stream in (proc.stdin, proc.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _tail(log: Path, lines: int) -> str:
    text = log.read_text("utf-8", "replace") if log.exists() else "(no log)"
    return f"--- the end of {log}:\n" + "\n".join(text.splitlines()[-lines:])


class GreeterServer:
    """A greeter server process on ``ip:port``; ``xds_bootstrap`` makes it xDS-enabled."""

    def __init__(self, ip: str, port: int, pod: str, version: str, workdir: Path,
                 xds_bootstrap: Path | None = None) -> None:
        self.ip, self.port, self.pod, self.version = ip, port, pod, version
        self.log = workdir / f"{pod}.log"
        argv = ["server", "--ip", ip, "--port", str(port), "--pod", pod, "--version", version]
        if xds_bootstrap is not None:
            argv.append("--xds")
        self.proc = _start(argv, _env(xds_bootstrap), self.log, interactive=False)

    def serving(self) -> bool:
        """True once a plain (non-xDS) call to it succeeds."""
        import grpc

        if self.proc.poll() is not None:
            raise AssertionError(f"greeter {self.pod} exited ({self.proc.returncode})\n{self.log_tail()}")
        with grpc.insecure_channel(f"{self.ip}:{self.port}") as channel:
            stub = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
            try:
                return json.loads(stub(b"hi", timeout=1))["pod"] == self.pod  # type: ignore[no-any-return]
            except grpc.RpcError:
                return False

    def stop(self) -> None:
        _stop(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)

    def __repr__(self) -> str:
        return f"<GreeterServer {self.pod} {self.ip}:{self.port}>"


class GrpcClient:
    """A client process with its own xDS bootstrap; each method is one command to it."""

    def __init__(self, bootstrap: Path, workdir: Path, name: str = "grpc-client") -> None:
        self.name = name
        self.log = workdir / f"{name}.log"
        self.proc = _start(["client"], _env(bootstrap), self.log, interactive=True)

    def _ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"{self.name} exited ({self.proc.poll()})\n{self.log_tail()}")
        out: dict[str, Any] = json.loads(line)
        if "exception" in out:
            raise AssertionError(f"{self.name}: {out['exception']}")
        return out

    def calls(self, target: str, n: int = 1, *, metadata: Mapping[str, str] | None = None, timeout: float = 5.0,
              wait_for_ready: bool = False, flaky: str = "") -> dict[str, Any]:
        """``{"ok": {pod: count}, "errors": {code: count}, "details": [...]}`` of ``n`` calls in a row."""
        return self._ask(op="calls", target=target, n=n, metadata=dict(metadata or {}), timeout=timeout,
                         wait_for_ready=wait_for_ready, flaky=flaky)

    def loop_start(self, target: str, *, metadata: Mapping[str, str] | None = None) -> None:
        self._ask(op="loop_start", target=target, metadata=dict(metadata or {}))

    def loop_stop(self) -> dict[str, Any]:
        return self._ask(op="loop_stop")

    def stop(self) -> None:
        _stop(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)

    def __repr__(self) -> str:
        return f"<GrpcClient {self.name}>"


def main() -> None:
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--ip", required=True)
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--pod", required=True)
    s.add_argument("--version", default="")
    s.add_argument("--xds", action="store_true")
    sub.add_parser("client")
    args = p.parse_args()
    if args.cmd == "server":
        serve(args.ip, args.port, args.pod, args.version, args.xds)
    else:
        client()


if __name__ == "__main__":
    main()
