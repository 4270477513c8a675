"""The same plugin as sbx_files_rw; only its manifest's file_permissions differ."""

from sbx_files_rw.plugin import Plugin

__all__ = ["Plugin"]
