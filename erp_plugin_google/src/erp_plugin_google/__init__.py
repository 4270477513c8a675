"""Google Workspace plugin (`google_services`) for the ERP plugin host: Gmail, Drive and Calendar.

Importing this package is cheap and imports no Google client code; the host loads the plugin class
from `erp_plugin_google.plugin` through the `erp_plugins` entry point.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("erp-plugin-google")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
