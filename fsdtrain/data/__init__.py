"""Fleet data: clip schema, synthetic fleet, shards, streaming."""
