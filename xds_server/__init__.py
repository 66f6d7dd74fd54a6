"""meshpilot's server side: config sources, the versioned xDS cache, the gRPC xDS protocol, the CLI."""
