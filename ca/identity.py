"""Workload identities and their SPIFFE IDs: ``spiffe://<trust-domain>/ns/<namespace>/sa/<sa>``.

This is the path layout Istio uses, so a certificate issued here names a workload the same
way an Istio proxy expects to see it in a peer's URI SAN. Validation is strict because the
identity ends up inside a certificate: a namespace with a ``/`` in it would forge a
different path, so names follow Kubernetes' own rules (namespace: DNS-1123 label; service
account: DNS-1123 subdomain) and the trust domain follows the SPIFFE spec's character set.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TRUST_DOMAIN = "cluster.local"

_DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# SPIFFE: trust domain characters are lowercase letters, digits, '.', '-' and '_'.
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")


class InvalidIdentity(ValueError):
    """A namespace, service account, trust domain or SPIFFE ID that cannot name a workload."""


def check_dns1123_label(value: str, what: str) -> str:
    if len(value) > 63 or not _DNS1123_LABEL.fullmatch(value):
        raise InvalidIdentity(
            f"{what} {value!r} is not a DNS-1123 label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters)"
        )
    return value


def check_dns1123_subdomain(value: str, what: str) -> str:
    if len(value) > 253 or not all(_DNS1123_LABEL.fullmatch(part) for part in value.split(".")):
        raise InvalidIdentity(
            f"{what} {value!r} is not a DNS-1123 subdomain (dot-separated lowercase labels of "
            "letters, digits and '-', at most 253 characters)"
        )
    return value


def check_trust_domain(value: str) -> str:
    if not value or len(value) > 255 or not _TRUST_DOMAIN.fullmatch(value):
        raise InvalidIdentity(
            f"trust domain {value!r} must be 1-255 characters of lowercase letters, digits, '.', '-', '_'"
        )
    return value


@dataclass(frozen=True, order=True)
class WorkloadIdentity:
    """Who a workload is: the (namespace, service account) pair inside one trust domain."""

    trust_domain: str
    namespace: str
    service_account: str

    def __post_init__(self) -> None:
        check_trust_domain(self.trust_domain)
        check_dns1123_label(self.namespace, "namespace")
        check_dns1123_subdomain(self.service_account, "service account")

    @classmethod
    def of(
        cls, namespace: str, service_account: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
    ) -> WorkloadIdentity:
        return cls(trust_domain, namespace, service_account)

    @property
    def spiffe_id(self) -> str:
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.service_account}"

    @classmethod
    def parse(cls, spiffe_id: str) -> WorkloadIdentity:
        """The inverse of :attr:`spiffe_id`; anything but exactly that shape is refused."""
        prefix = "spiffe://"
        if not spiffe_id.startswith(prefix):
            raise InvalidIdentity(f"{spiffe_id!r} is not a spiffe:// URI")
        trust_domain, _, path = spiffe_id[len(prefix) :].partition("/")
        parts = path.split("/")
        if len(parts) != 4 or parts[0] != "ns" or parts[2] != "sa":
            raise InvalidIdentity(f"{spiffe_id!r} is not spiffe://<trust-domain>/ns/<namespace>/sa/<name>")
        return cls(trust_domain, parts[1], parts[3])

    def __str__(self) -> str:
        return self.spiffe_id
