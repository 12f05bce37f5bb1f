"""The synthetic fleet: seeded scenes, a camera rig, a renderer, and clips written as shards or raw drives."""
