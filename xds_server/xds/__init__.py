"""The xDS core: protocol state machines, gRPC server, versioned cache, stream status."""
