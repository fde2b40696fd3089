"""Persian text normalisation: one function for what the model reads, one for identity keys.

Real scrapes mix Arabic yeh/kaf (ي ك) with Persian (ی ک), ZWNJ with spaces, and carry
diacritics and tatweel. `normalize_text` cleans what the encoder reads (it keeps ZWNJ, which
carries meaning in Persian words); `identity_key` goes further (ZWNJ≡space, Latin lower-cased)
and decides when two passages or two titles are the same.

Invisible characters (zero-width marks, bidi controls, BOM, soft hyphen, blank-looking fillers) and
stray control characters are dropped, so a text made only of them, of spaces, ZWNJ, tatweel or
diacritics is blank (`is_blank`): never a passage or a dish. `invalid_character` finds what no valid
text holds (NUL and other non-whitespace control characters, lone surrogates), for `prepare` to skip.

`query_text` is the one rule for a search text or a question (CLI, `Retriever`, server): normalised first,
then checked and cut, so what is checked is what the encoder and the lexical scorer read.
"""

import hashlib
import re
import unicodedata

from faclip.errors import FaclipError

ZWNJ = "\u200c"
# Arabic code points and their Persian forms; Arabic-Indic digits to Persian digits.
_LETTERS = {
    "\u064a": "\u06cc",  # ي -> ی
    "\u0649": "\u06cc",  # ى -> ی
    "\u0643": "\u06a9",  # ك -> ک
    "\u0629": "\u0647",  # ة -> ه
    **{chr(0x0660 + i): chr(0x06F0 + i) for i in range(10)},
}
_ARABIC = re.compile(f"[{''.join(_LETTERS)}]")  # a regex, not str.translate: ~10x faster on long texts
# Harakat, tanwin, shadda, sukun, superscript alef, and tatweel (kashida): dropped.
_DROP = re.compile("[\u064b-\u065f\u0670\u0640]")
# Invisible characters scrapes leave behind (ZWNJ itself is handled apart): Unicode's format characters
# (zero-width space/joiner, LRM/RLM, bidi embeddings and isolates, word joiner, BOM, soft hyphen, tags),
# the combining grapheme joiner, blank-looking fillers (Hangul fillers, braille blank), and control
# characters that are not whitespace (NUL, ESC, DEL, C1); lone surrogates too.
_CONTROL = "\x00-\x08\x0e-\x1b\x7f-\x84\x86-\x9f\ud800-\udfff"
_INVISIBLE = re.compile(
    f"[{_CONTROL}\u00ad\u034f\u061c\u115f\u1160\u180e\u200b\u200d-\u200f\u202a-\u202e\u2060-\u2064"
    "\u2066-\u206f\u2800\u3164\ufeff\uffa0\ufff9-\ufffb\U000e0001\U000e0020-\U000e007f]")
_INVALID = re.compile(f"[{_CONTROL}]")
_DROPPED = re.compile(f"{_DROP.pattern}|{_INVISIBLE.pattern}")
_ZWNJ_RUN = re.compile(f"\\s*{ZWNJ}[\\s{ZWNJ}]*")
_SPACES_TO_FIX = re.compile(r"\s{2,}|[^\S ]")  # what collapsing changes: runs, and tabs/newlines/NBSP...
# A query is a dish name or a question: longer than this (as given, before normalising) it is refused, so a
# huge string costs nothing. The model reads far less of it anyway (max_len tokens).
MAX_QUERY_CHARS = 100_000
EMPTY_TEXT = 'the text query is empty; give a few words, e.g. --text "قورمه سبزی"'


def normalize_text(text: str) -> str:
    """Clean a Persian text for the encoder: NFC, Persian letters, no diacritics, tidy ZWNJ and spaces."""
    text = _ARABIC.sub(lambda m: _LETTERS[m.group()], unicodedata.normalize("NFC", text))
    text = _INVISIBLE.sub("", _DROP.sub("", text))
    if ZWNJ in text:
        text = _ZWNJ_RUN.sub(ZWNJ, text)  # a ZWNJ next to spaces, or repeated, is one ZWNJ
    text = _SPACES_TO_FIX.sub(" ", text).strip()
    return text.strip(ZWNJ).strip()


def query_text(text, max_chars: int) -> str:
    """What is read of a search text or question: normalised, then cut to `max_chars` (the encoder's and the
    lexical scorer's bound); a blank one (after normalising) or one over MAX_QUERY_CHARS is one line."""
    if not isinstance(text, str):
        raise FaclipError(EMPTY_TEXT)
    if len(text) > MAX_QUERY_CHARS:
        raise FaclipError(f"the text query is {len(text):,} characters long; give at most {MAX_QUERY_CHARS:,} "
                          "(a dish name or a question)")
    read = normalize_text(normalize_text(text)[:max_chars])  # normalised again: a cut may end in a space
    if is_blank(read):
        raise FaclipError(EMPTY_TEXT if is_blank(text) else f"the text query holds nothing readable in its first "
                          f"{max_chars:,} characters (what the model reads); put the words first")
    return read


def identity_key(text: str) -> str:
    """The form two texts must share to be the same passage or dish (ZWNJ≡space, Latin lower-cased)."""
    return _SPACES_TO_FIX.sub(" ", normalize_text(text).replace(ZWNJ, " ")).strip().lower()


def is_blank(text: str) -> bool:
    """True when nothing readable is left after normalisation: no letter, digit, symbol or punctuation
    (only spaces, ZWNJ, tatweel, diacritics, invisible or control characters)."""
    # Scans the text as written and stops at the first readable character: no normalising pass.
    return not any(unicodedata.category(c)[0] in "LNPS" and not _DROPPED.match(c) for c in text)


def invalid_character(text: str) -> str | None:
    """Where `text` holds a character no valid text has (NUL, another non-whitespace control character,
    a lone surrogate), as 'U+0000 at character 12'; None when it holds none."""
    match = _INVALID.search(text)
    return None if match is None else f"U+{ord(match.group()):04X} at character {match.start() + 1}"


def food_id_for(title: str) -> str:
    """The dish id: the identity form of its title, readable (e.g. 'قورمه سبزی')."""
    return identity_key(title)


def passage_id_for(passage: str) -> str:
    """Stable id of a passage: 16 hex digits of sha256 over its identity form."""
    return hashlib.sha256(identity_key(passage).encode("utf-8")).hexdigest()[:16]
