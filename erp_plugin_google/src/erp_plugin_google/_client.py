"""The official client, built offline from its packaged discovery documents, with an endpoint override.

`client_options.api_endpoint` moves ordinary calls but not media uploads (they keep Google's https URL), so
an override rewrites the document's rootUrl/baseUrl before `build_from_document`: then calls, uploads and
the upload session URLs all go to `root_url`.

httplib2 connections are not thread-safe, so each worker thread has its own authorized connection (over
the one shared credentials object); connections stay open between calls.

`token_info` asks Google's tokeninfo endpoint about the current access token: only a live check notices a
token that was revoked before it expired, and it says which scopes the token really carries.
"""

from __future__ import annotations

import json
import threading
from typing import Any
from urllib.parse import urlencode, urljoin

import google_auth_httplib2
from google.auth.credentials import Credentials
from googleapiclient import discovery
from googleapiclient.discovery_cache import get_static_doc
from googleapiclient.errors import HttpError
from googleapiclient.http import build_http

from erp_plugins_core import UnavailableError

APIS = {"gmail": "v1", "drive": "v3", "calendar": "v3"}
#: Where Google's APIs (and the tokeninfo endpoint, under oauth2/v3/) live unless `root_url` moves them.
GOOGLE_ROOT_URL = "https://www.googleapis.com/"
TOKENINFO_PATH = "oauth2/v3/tokeninfo"


class TokenRejected(Exception):
    """Google's tokeninfo endpoint says the access token is not valid (revoked, or ended before its expiry)."""


def discovery_document(api: str, version: str, root_url: str | None) -> dict[str, Any]:
    """The packaged discovery document of `api`, pointed at `root_url` when given."""
    text = get_static_doc(api, version)
    if text is None:
        raise RuntimeError(f"google-api-python-client ships no discovery document for {api} {version}")
    doc: dict[str, Any] = json.loads(text)
    if root_url:
        doc["rootUrl"] = root_url
        doc["mtlsRootUrl"] = root_url
        doc["baseUrl"] = urljoin(root_url, doc.get("servicePath", ""))
    return doc


class GoogleClient:
    """The three API services and a per-thread authorized HTTP connection."""

    def __init__(self, credentials: Credentials, root_url: str | None, timeout: float = 60.0) -> None:
        self.credentials = credentials
        self._root_url = root_url or GOOGLE_ROOT_URL
        self._timeout = timeout
        self._local = threading.local()
        self.services: dict[str, Any] = {
            api: discovery.build_from_document(discovery_document(api, version, root_url), http=self.http())
            for api, version in APIS.items()
        }

    def http(self) -> google_auth_httplib2.AuthorizedHttp:
        """This thread's authorized connection (created on first use)."""
        conn = getattr(self._local, "http", None)
        if conn is None:
            raw = build_http()  # googleapiclient's Http: 308 is not a redirect (resumable uploads need it)
            raw.timeout = self._timeout
            conn = google_auth_httplib2.AuthorizedHttp(self.credentials, http=raw)
            self._local.http = conn
        return conn

    def refresh(self) -> None:
        """Refresh the access token now (blocking), e.g. for a health check of expired credentials."""
        self.credentials.refresh(google_auth_httplib2.Request(self.http().http))

    def token_info(self) -> dict[str, Any]:
        """Google's view of the current access token (blocking): `scope`, `expires_in`, ... as Google sends them.

        TokenRejected when Google calls the token invalid; UnavailableError when `root_url` has no tokeninfo
        endpoint (404); an HttpError (without the token in its URL) for any other failure. Sent without the
        Authorization header: the token is the question, not the credential.
        """
        token = self.credentials.token
        if not token:
            raise TokenRejected("there is no access token to check")
        url = urljoin(self._root_url, TOKENINFO_PATH)
        resp, content = self.http().http.request(url + "?" + urlencode({"access_token": token}), "GET")
        if resp.status == 400:  # Google: {"error": "invalid_token", "error_description": "Invalid Value"}
            raise TokenRejected("Google no longer accepts the access token")
        if resp.status == 404:  # a root_url that serves the APIs but not Google's oauth2 endpoints
            raise UnavailableError(f"{url} does not exist (HTTP 404), so the access token cannot be checked; "
                                   f"root_url must serve Google's {TOKENINFO_PATH} as well as the APIs")
        if resp.status != 200:
            raise HttpError(resp, content, uri=url)
        try:
            info = json.loads(content)
        except ValueError:
            info = None
        if not isinstance(info, dict):
            raise HttpError(resp, b'{"error": {"message": "tokeninfo answered with something other than JSON"}}',
                            uri=url)
        return info
