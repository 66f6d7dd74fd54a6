"""Running a mesh on one machine: bootstrap, demo, local processes, finding Envoy."""
