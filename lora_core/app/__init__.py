"""Standalone app: a diffusers pipeline host for the lora_core engine (generation back end + web UI)."""
