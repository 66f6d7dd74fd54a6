"""istioctl-style verbs that read a running ``meshpilot serve`` over its HTTP API, or check files offline."""
