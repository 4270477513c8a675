"""The fleet plugin with a short `resources.timeout` (2 s), for a call that cannot wait long for a slot."""

from sbx_fleet.plugin import Plugin

__all__ = ["Plugin"]
