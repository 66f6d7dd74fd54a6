"""Manifests shared by the source tests."""

from __future__ import annotations

from textwrap import dedent


def vs(
    name: str, host: str = "reviews", weights: tuple[int, int] = (50, 50), namespace: str | None = None
) -> str:
    ns = f"\n  namespace: {namespace}" if namespace else ""
    return dedent(
        f"""\
        apiVersion: networking.istio.io/v1
        kind: VirtualService
        metadata:
          name: {name}{ns}
        spec:
          hosts: [{host}]
          http:
          - route:
            - destination: {{host: {host}, subset: v1}}
              weight: {weights[0]}
            - destination: {{host: {host}, subset: v2}}
              weight: {weights[1]}
        """
    )


def svc(name: str, port: int = 9080) -> str:
    return dedent(
        f"""\
        apiVersion: v1
        kind: Service
        metadata:
          name: {name}
        spec:
          selector: {{app: {name}}}
          ports:
          - name: http
            port: {port}
        """
    )


def docs(*parts: str) -> str:
    return "---\n".join(parts)
