"""PDF notes: the text of each page (pypdf). A page with no text layer (a scan) comes back empty and is
reported as skipped; citations name the page (the chunk's heading "Page N") and the line within it."""

from __future__ import annotations

import io
import logging
import re

from pypdf import PdfReader
from pypdf.errors import PyPdfError

PAGE_HEADING = re.compile(r"^Page (\d+)$")


class UnreadablePdf(Exception):
    pass


def pdf_pages(data: bytes) -> list[str]:
    """Text per page, in order; '' for a page without extractable text."""
    logging.getLogger("pypdf").setLevel(logging.ERROR)  # its warnings about odd but readable files are noise here
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadablePdf("encrypted")
        return [(page.extract_text() or "").strip("\n") for page in reader.pages]
    except UnreadablePdf:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as e:
        raise UnreadablePdf(str(e).splitlines()[0] if str(e) else type(e).__name__) from None


def page_heading(number: int) -> str:
    return f"Page {number}"


def cited_page(path: str, heading: str) -> int | None:
    """The page a PDF chunk came from, for citations; None for other notes."""
    match = PAGE_HEADING.match(heading) if path.lower().endswith(".pdf") else None
    return int(match.group(1)) if match else None
