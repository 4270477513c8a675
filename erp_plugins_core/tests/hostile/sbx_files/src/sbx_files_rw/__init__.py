"""Sandbox test plugin with a read-write /data directory."""
