"""The wiring: the CLI, `meshpilot serve`, HTTP endpoints, push pacing and the pipeline."""
