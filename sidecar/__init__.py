"""The sidecar process beside the engine (GPU and engine collectors, SLO burn rates). Not built yet."""
