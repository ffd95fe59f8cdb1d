"""Small I/O helpers that the engine, the sidecar and the application share: atomic file writes and
starting a listener. Above the spec core, below everything else; imports no other project package."""
