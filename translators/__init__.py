"""Pure translation of the mesh model (Kubernetes and Istio resources) into Envoy resources.

No I/O, no gRPC, no Kubernetes client here: a World and a Proxy go in, Envoy protos and
ConfigErrors come out (see ``translators.api`` for the seam with the cache).
"""

from translators.translate import Translator

__all__ = ["Translator"]
