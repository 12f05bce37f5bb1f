"""Weights files and checkpoints as data: safetensors + typed metadata, head-only files, the checkpoint folder and its pickle-free ZeRO reader, export."""
