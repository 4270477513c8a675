"""Sandbox test plugin with a read-only /data directory."""
