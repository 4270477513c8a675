"""The RFC 822 message send_email uploads: recipients, an HTML body with its plain-text alternative, attachments."""

from __future__ import annotations

import mimetypes
import os
import re
from collections.abc import Callable
from email import policy
from email.message import EmailMessage
from email.utils import getaddresses
from html.parser import HTMLParser
from typing import BinaryIO

from erp_plugins_core import BadRequestError

#: Gmail's limit on a sent message (the discovery document's maxSize for messages.send): 35 MiB.
MAX_MESSAGE_BYTES = 36_700_160
_ADDRESS = re.compile(r"^[^@\s<>,;]+@[^@\s<>,;]+\.[^@\s<>,;]+$")
_TAG = re.compile(r"<\s*[a-zA-Z!/][^>]*>")
#: 7-bit transfer encodings only (non-ASCII text becomes quoted-printable or base64): the client's multipart
#: writer encodes a message/rfc822 part as ASCII, and 7-bit mail passes every relay unchanged.
_POLICY = policy.SMTP.clone(cte_type="7bit")
_BLOCK = {"p", "div", "tr", "table", "ul", "ol", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "hr"}


class _TextOf(HTMLParser):
    """Collects the readable text of an HTML document: blocks become lines, links keep their URL."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip = 0
        self._href: list[str | None] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK:
            self.parts.append("\n\n")
        elif tag == "li":
            self.parts.append("\n- ")
        elif tag == "td":
            self.parts.append("\t")
        if tag == "a":
            self._href.append(dict(attrs).get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "head", "title"):
            self._skip = max(0, self._skip - 1)
        elif tag in _BLOCK:
            self.parts.append("\n\n")
        elif tag == "a" and self._href:
            href = self._href.pop()
            if href and not href.startswith(("#", "javascript:")):
                self.parts.append(f" ({href})")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(re.sub(r"\s+", " ", data))


def is_html(body: str) -> bool:
    """Whether `body` looks like HTML (has at least one tag)."""
    return bool(_TAG.search(body))


def html_to_text(body: str) -> str:
    """A plain-text rendering of an HTML body, for the text/plain alternative."""
    parser = _TextOf()
    parser.feed(body)
    parser.close()
    text = "".join(parser.parts)
    lines = [line.strip(" ") for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip() + "\n"


def parse_recipients(to: str) -> list[str]:
    """The addresses in `to` (comma-separated, display names allowed); BadRequestError naming a bad one."""
    if not isinstance(to, str) or not to.strip():
        raise BadRequestError("send_email: 'to' is empty; give one or more addresses separated by commas")
    pairs = getaddresses([to.replace(";", ",")])
    out: list[str] = []
    for name, addr in pairs:
        if not addr and not name:
            continue
        if not _ADDRESS.match(addr):
            shown = addr or name
            raise BadRequestError(f"send_email: 'to' holds {shown!r}, which is not an email address like a@example.com")
        out.append(f"{name} <{addr}>" if name else addr)
    if not out:
        raise BadRequestError("send_email: 'to' names no address; give one or more separated by commas")
    return out


def build_message(
    to: str,
    subject: str,
    body: str,
    attachments: list[str],
    open_file: Callable[[str], BinaryIO],
) -> bytes:
    """The RFC 822 bytes of the mail; attachments are read through `open_file` (the host's files service)."""
    recipients = parse_recipients(to)
    if not isinstance(subject, str):
        raise BadRequestError("send_email: 'subject' must be text")
    if "\n" in subject or "\r" in subject:
        raise BadRequestError("send_email: 'subject' must be one line (it contains a line break)")
    if not isinstance(body, str):
        raise BadRequestError("send_email: 'body' must be text (HTML or plain)")
    if attachments is None:
        attachments = []
    if not isinstance(attachments, list) or not all(isinstance(a, str) for a in attachments):
        raise BadRequestError("send_email: 'attachments' must be a list of file paths")

    msg = EmailMessage(policy=_POLICY)
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = subject
    if is_html(body):
        msg.set_content(html_to_text(body))
        msg.add_alternative(body, subtype="html")
    else:
        msg.set_content(body)

    budget = MAX_MESSAGE_BYTES
    for path in attachments:
        name = os.path.basename(path) or "attachment"
        ctype, encoding = mimetypes.guess_type(name)
        if ctype is None or encoding is not None:  # e.g. .tar.gz is sent as the compressed bytes it is
            ctype = "application/octet-stream"
        maintype, subtype = ctype.split("/", 1)
        with open_file(path) as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            budget -= (size + 2) // 3 * 4  # base64 grows it by a third
            if budget < 0:
                raise BadRequestError(
                    f"send_email: the attachments exceed Gmail's 35 MB message limit at {name!r}; "
                    f"upload large files with upload_file and send a link instead"
                )
            fh.seek(0)
            data = fh.read()
        msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    raw = msg.as_bytes()
    if len(raw) > MAX_MESSAGE_BYTES:
        raise BadRequestError(
            f"send_email: the message is {len(raw) / 1e6:.1f} MB, more than Gmail's 35 MB limit; "
            f"upload large files with upload_file and send a link instead"
        )
    return raw

