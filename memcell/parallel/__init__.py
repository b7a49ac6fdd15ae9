"""Fast paths that run a whole sequence without a per-step loop (parallel and chunkwise forms)."""
