"""Listeners of a sidecar whose pod's traffic iptables captures (Istio's ``REDIRECT`` mode).

The injected ``istio-init`` rules send the app's outbound TCP to 15001 and the pod's
inbound TCP to 15006; the proxy (uid 1337) is never captured. What the proxy gets, as
istiod builds it (pilot/pkg/networking/core/listener_builder.go, listener_inbound.go):

* ``virtualOutbound`` (0.0.0.0:15001, ``use_original_dst``): Envoy restores the original
  destination and hands the connection to the listener for that ``ip:port``, else for
  ``0.0.0.0:port``; what none takes goes through its own chains: to PassthroughCluster
  (outboundTrafficPolicy ALLOW_ANY) or BlackHoleCluster (REGISTRY_ONLY), and a connection
  to 15001 itself to BlackHoleCluster (no loop).
* the outbound listeners it hands to, ``bind_to_port: false``: ``0.0.0.0_<port>`` for a
  port with HTTP services (routed by Host through RDS ``"<port>"``, as without capture),
  and ``<clusterIP>_<port>`` for a TCP or TLS service with an address (ClusterIP, or a
  ServiceEntry's address), so TCP services sharing a port number are told apart by
  address; a TCP port with a service without an address keeps the wildcard listener.
* ``virtualInbound`` (0.0.0.0:15006): the ``original_dst`` listener filter, then one set of
  filter chains per inbound port (``destination_port``), the same chains the per-IP
  inbound listener has (mTLS per PeerAuthentication, authorization, HTTP detection), the
  TLS and HTTP inspectors enabled only on the ports whose chains need them; a port no
  service declares goes to InboundPassthroughCluster (its original destination, from
  127.0.0.6, with the workload's PeerAuthentication); one to 15006 itself to BlackHoleCluster.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.config.listener.v3 import listener_components_pb2 as lc
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.listener.original_dst.v3 import original_dst_pb2
from envoy.type.v3 import range_pb2

from translators import listeners
from translators.features import l4, mtls
from translators.features._proto import to_any, u32
from translators.model.names import BLACKHOLE, PASSTHROUGH, carries_http, is_ip
from translators.model.registry import MeshService

OUTBOUND_PORT = 15001
INBOUND_PORT = 15006
VIRTUAL_OUTBOUND = "virtualOutbound"
VIRTUAL_INBOUND = "virtualInbound"
INBOUND_PASSTHROUGH = "InboundPassthroughCluster"
#: The source of the passthrough's connections to the app (Istio's InboundPassthroughBindIpv4).
PASSTHROUGH_BIND = "127.0.0.6"
WILDCARD = "0.0.0.0"

ORIGINAL_DST = lc.ListenerFilter(name="envoy.filters.listener.original_dst",
                                 typed_config=to_any(original_dst_pb2.OriginalDst()))


def _address(ip: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(socket_address=address_pb2.SocketAddress(address=ip, port_value=port))


def _tcp_chain(name: str, cluster: str, port: int | None = None) -> lc.FilterChain:
    chain = lc.FilterChain(name=name, filters=[l4.tcp_proxy(cluster, ((cluster, 1),))])
    if port is not None:
        chain.filter_chain_match.destination_port.CopyFrom(u32(port))
    return chain


# ---------------------------------------------------------------- outbound


def virtual_outbound(mode: str) -> listener_pb2.Listener:
    """15001; ``mode``: the proxy's outboundTrafficPolicy (its Sidecar's, else the mesh's)."""
    catch_all = PASSTHROUGH if mode == "ALLOW_ANY" else BLACKHOLE
    lst = listener_pb2.Listener(
        name=VIRTUAL_OUTBOUND,
        address=_address(WILDCARD, OUTBOUND_PORT),
        traffic_direction=base_pb2.OUTBOUND,
        filter_chains=[_tcp_chain(f"{VIRTUAL_OUTBOUND}-blackhole", BLACKHOLE, OUTBOUND_PORT),
                       _tcp_chain(f"{VIRTUAL_OUTBOUND}-catchall-tcp", catch_all)],
    )
    lst.use_original_dst.value = True  # (Envoy adds the original_dst listener filter for it)
    return lst


def outbound(address: str, port: listeners.OutboundPort, labels: Mapping[str, str], namespace: str,
             ) -> listener_pb2.Listener:
    """``<address>_<port>``, reached through 15001 only: what the per-IP listener of ``port``
    does, for every destination (``0.0.0.0``) or for one TCP/TLS service's address (``port``
    is then that service's own row: its cluster, its VirtualService tcp/tls routes)."""
    listener = listeners.outbound(address, port, labels, namespace)
    listener.bind_to_port.value = False
    return listener


def service_address(svc: MeshService) -> str:
    """The one address a TCP service is reached at (ClusterIP, or a ServiceEntry's single
    IP), or "" (headless, none, or a CIDR: the wildcard listener serves it)."""
    addresses = svc.shape.addresses
    return addresses[0] if len(addresses) == 1 and is_ip(addresses[0]) else ""


def by_address(svc: MeshService, number: int) -> bool:
    """Whether ``svc``'s port ``number`` gets its own ``<address>_<port>`` listener."""
    return bool(service_address(svc)) and any(
        p.number == number and not carries_http(p.protocol) for p in svc.shape.ports)



# ---------------------------------------------------------------- inbound


def _port_rule(ports: Sequence[int]) -> lc.ListenerFilterChainMatchPredicate:
    rules = [lc.ListenerFilterChainMatchPredicate(destination_port_range=range_pb2.Int32Range(start=p, end=p + 1))
             for p in sorted(ports)]
    if len(rules) == 1:
        return rules[0]
    return lc.ListenerFilterChainMatchPredicate(or_match=lc.ListenerFilterChainMatchPredicate.MatchSet(rules=rules))


def _inspector(template: lc.ListenerFilter, needs: Mapping[int, bool]) -> lc.ListenerFilter | None:
    """``template`` on the ports (0: the passthrough, i.e. every other port) that ``needs`` it."""
    if not any(needs.values()):
        return None
    f = lc.ListenerFilter()
    f.CopyFrom(template)
    if needs.get(0):  # on by default: off where a declared port does not need it
        off = [p for p, need in needs.items() if p and not need]
        if off:
            f.filter_disabled.CopyFrom(_port_rule(off))
    else:  # off by default: on only where needed
        on = [p for p, need in needs.items() if p and need]
        f.filter_disabled.not_match.CopyFrom(_port_rule(on))
    return f


def passthrough_inbound(mode: str, has_identity: bool) -> listener_pb2.Listener:
    """The chains for inbound ports no service declares: the workload-wide PeerAuthentication
    ``mode``, then to the original destination (the app, if it listens there)."""
    lst = listener_pb2.Listener(name=VIRTUAL_INBOUND, filter_chains=[_tcp_chain("", INBOUND_PASSTHROUGH)])
    mtls.secure_inbound(lst, mode, has_identity, False)
    return lst


def virtual_inbound(ports: Sequence[tuple[int, listener_pb2.Listener]], passthrough: listener_pb2.Listener,
                    ) -> listener_pb2.Listener:
    """15006 from the per-port inbound listeners (``(target port, listener)``, as
    ``listeners.inbound`` builds them) and ``passthrough`` (``passthrough_inbound``)."""
    chains = [_tcp_chain(f"{VIRTUAL_INBOUND}-blackhole", BLACKHOLE, INBOUND_PORT)]
    tls_needs: dict[int, bool] = {}
    http_needs: dict[int, bool] = {}
    for target, lst in (*ports, (0, passthrough)):
        names = {f.name for f in lst.listener_filters}
        tls_needs[target] = l4.TLS_INSPECTOR.name in names
        http_needs[target] = l4.HTTP_INSPECTOR.name in names
        for c in lst.filter_chains:
            chain = lc.FilterChain()
            chain.CopyFrom(c)
            label = f"inbound|{target}||" if target else VIRTUAL_INBOUND
            chain.name = f"{label}-{c.name}" if c.name else label
            if target:
                chain.filter_chain_match.destination_port.CopyFrom(u32(target))
            chains.append(chain)
    filters = [ORIGINAL_DST]
    # The TLS inspector first: the HTTP inspector skips what it found to be TLS.
    filters += [f for f in (_inspector(l4.TLS_INSPECTOR, tls_needs), _inspector(l4.HTTP_INSPECTOR, http_needs)) if f]
    return listener_pb2.Listener(
        name=VIRTUAL_INBOUND,
        address=_address(WILDCARD, INBOUND_PORT),
        traffic_direction=base_pb2.INBOUND,
        listener_filters=filters,
        # A server-speaks-first protocol sends nothing to inspect: served as TCP after the wait.
        continue_on_listener_filters_timeout=True,
        filter_chains=chains,
    )

