"""Sandbox test plugin."""
