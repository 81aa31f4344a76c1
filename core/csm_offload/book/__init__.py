"""Audiobooks: sources (text, Markdown, EPUB, PDF, HTML files, web pages, urls.csv groups) read
into chapters, chapter text made speakable, and (in the audio modules) chapters assembled and
encoded.

The text half: `read_book` / `read_url_groups` give `Book`s; `for_speech` turns a chapter's
text into what a narrator reads; `csm_offload.chunking.split_chunks` cuts it into requests.
Heavy libraries (trafilatura, pypdf, num2words, markdown-it) load only when a source needs them.
"""

from .model import DEFAULT_LANGUAGE, Book, Chapter, Skipped, Unreadable
from .sources import (
    READERS,
    UrlRow,
    is_url,
    parse_url_table,
    read_book,
    read_file,
    read_url_groups,
    read_url_table,
    select_groups,
)
from .speech import for_speech
from .web import WebLimits

__all__ = [
    "DEFAULT_LANGUAGE",
    "READERS",
    "Book",
    "Chapter",
    "Skipped",
    "Unreadable",
    "UrlRow",
    "WebLimits",
    "for_speech",
    "is_url",
    "parse_url_table",
    "read_book",
    "read_file",
    "read_url_groups",
    "read_url_table",
    "select_groups",
]
