"""A validating admission webhook: invalid Istio resources are refused at ``kubectl apply``."""
