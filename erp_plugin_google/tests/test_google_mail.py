"""send_email over the real client against the loopback Gmail: MIME structure, recipients, attachments."""

from __future__ import annotations

import os

import pytest
from google_testkit import allow_files

from erp_plugins_core._errors import BadRequestError, PermissionDenied

PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\n" + bytes(range(256)) * 40 + b"\n%%EOF\n"

HTML = """<html><head><style>p {color: red}</style></head><body>
<h1>Invoice 2025-0042</h1><p>Dear customer,<br>please find the invoice attached.</p>
<ul><li>Total: 1&nbsp;234,00 &euro;</li><li>Due: 2025-03-31</li></ul>
<p>Pay online: <a href="https://pay.example.com/i/42">pay now</a></p></body></html>"""


async def test_invoice_with_pdf_to_several_recipients(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin()
    pdf = tmp_path / "invoice-0042.pdf"
    pdf.write_bytes(PDF)
    csv = tmp_path / "lines.csv"
    csv.write_text("item,qty\nwidget,3\n")
    allow_files(pdf, csv)

    message_id = await plugin.send_email(
        to="billing@customer.example, Jane Doe <jane@customer.example>,ops@example.org",
        subject="Invoice 2025-0042",
        body=HTML,
        attachments=[str(pdf), str(csv)],
    )

    [mail] = fake.mails
    assert message_id == mail.id
    assert mail.query["uploadType"] == "multipart"
    assert mail.recipients == ["billing@customer.example", "jane@customer.example", "ops@example.org"]
    assert mail.subject == "Invoice 2025-0042"
    assert mail.structure == [
        "multipart/mixed", "multipart/alternative", "text/plain", "text/html", "application/pdf", "text/csv",
    ]
    assert mail.attachments[0] == ("invoice-0042.pdf", "application/pdf", PDF)
    assert mail.attachments[1] == ("lines.csv", "text/csv", b"item,qty\nwidget,3\n")
    assert mail.html.replace("\r\n", "\n").strip() == HTML.strip()
    # the text alternative is readable text derived from the HTML: no tags, no CSS, links kept
    assert "Invoice 2025-0042" in mail.text and "please find the invoice attached." in mail.text
    assert "- Total: 1 234,00 €" in mail.text
    assert "pay now (https://pay.example.com/i/42)" in mail.text
    assert "<" not in mail.text and "color" not in mail.text
    [seen] = fake.requests_to("gmail.send")
    assert seen.token is not None and seen.path == "/upload/gmail/v1/users/me/messages/send"


async def test_non_ascii_subject_body_and_filename(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin()
    doc = tmp_path / "Übersicht März.pdf"
    doc.write_bytes(PDF)
    allow_files(doc)
    await plugin.send_email(to="kö@example.com", subject="Rechnung für März – 42 €", body="<p>Grüße, Zoë 🎉</p>",
                            attachments=[str(doc)])
    [mail] = fake.mails
    assert mail.raw.isascii()  # 7-bit transfer encodings throughout
    assert mail.subject == "Rechnung für März – 42 €"
    assert "Grüße, Zoë 🎉" in mail.text and "Grüße, Zoë 🎉" in mail.html
    assert mail.attachments == [("Übersicht März.pdf", "application/pdf", PDF)]


async def test_plain_text_body_is_sent_as_text_only(make_plugin, fake):
    plugin, _ = await make_plugin()
    await plugin.send_email(to="a@example.com", subject="Hi", body="Just text, 2 < 3.", attachments=[])
    [mail] = fake.mails
    assert mail.structure == ["text/plain"]
    assert mail.text.strip() == "Just text, 2 < 3."


async def test_unknown_extension_is_octet_stream(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin()
    blob = tmp_path / "dump.weird-ext"
    blob.write_bytes(b"\x00\x01\x02")
    allow_files(blob)
    await plugin.send_email(to="a@example.com", subject="s", body="<p>x</p>", attachments=[str(blob)])
    assert fake.mails[0].attachments == [("dump.weird-ext", "application/octet-stream", b"\x00\x01\x02")]


@pytest.mark.parametrize(
    ("to", "subject", "needle"),
    [
        ("", "s", "'to' is empty"),
        ("a@example.com, not-an-address", "s", "'not-an-address'"),
        ("a@example.com", "two\nlines", "'subject' must be one line"),
    ],
)
async def test_bad_input_is_refused_before_sending(make_plugin, fake, to, subject, needle):
    plugin, _ = await make_plugin()
    with pytest.raises(BadRequestError, match="send_email") as info:
        await plugin.send_email(to=to, subject=subject, body="b", attachments=[])
    assert needle in str(info.value)
    assert fake.requests_to("gmail.send") == []


async def test_attachment_not_passed_to_the_call_is_refused(make_plugin, fake, tmp_path):
    plugin, _ = await make_plugin()
    secret = tmp_path / "state.db"
    secret.write_bytes(b"secret")
    allow_files()  # the host allowed no file for this call
    with pytest.raises(PermissionDenied, match="was not passed to this hook call"):
        await plugin.send_email(to="a@example.com", subject="s", body="b", attachments=[str(secret)])
    assert fake.mails == []


async def test_message_over_gmail_limit_is_refused_without_reading_it(make_plugin, fake, tmp_path):
    plugin, bridge = await make_plugin()
    big = tmp_path / "huge.bin"
    big.touch()
    os.truncate(big, 30 * 1024 * 1024)  # sparse: 30 MB, base64 makes 40 MB > 35 MB
    allow_files(big)
    with pytest.raises(BadRequestError, match="35 MB"):
        await plugin.send_email(to="a@example.com", subject="s", body="b", attachments=[str(big)])
    assert sum(bridge.reads) == 0
    assert fake.mails == []
