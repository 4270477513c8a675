"""The HTTP server of erp-plugins (`erp-plugins serve`): JSON API, OpenAI-compatible endpoint, admin console.

Needs the `server` extra: `pip install 'erp-plugins-core[server]'` (Starlette, uvicorn, Jinja2).
"""

from __future__ import annotations

from ._app import app_from_env, create_app
from ._settings import ServerSettings

__all__ = ["ServerSettings", "app_from_env", "create_app"]
