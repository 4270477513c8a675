"""PluginMetadata: the descriptive part of a manifest, as a plugin instance sees it.

Its own module so that importing a plugin's base class (`_interface`) does not import pydantic: a sandboxed
worker imports the plugin before anything else, and pydantic is most of that import's cost.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from ._interface import PluginType


class PluginMetadata(BaseModel):
    """The descriptive part of a manifest, as a plugin instance sees it."""

    model_config = ConfigDict(frozen=True)

    name: str
    version: str
    description: str = ""
    author: str = ""
    license: str = ""
    plugin_type: PluginType
