"""Persian text normalisation: one function for what the model reads, one for identity keys.

Real scrapes mix Arabic yeh/kaf (ي ك) with Persian (ی ک), Latin digits with Persian ones, ZWNJ with spaces,
store the presentation forms PDFs hold (ﮎﺏﺍﺏ), and carry diacritics and tatweel. `normalize_text` cleans what
the encoder reads and folds every spelling of a letter or digit to one (it keeps a ZWNJ between two letters,
which carries meaning in Persian words); `identity_key` goes further (ZWNJ≡space, Latin lower-cased) and
decides when two passages or two titles are the same. Queries go through the same two functions.

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
PERSIAN_DIGITS = "۰۱۲۳۴۵۶۷۸۹"
# Spellings of one letter or digit, folded to the Persian one. Each only changes how a word is spelled:
# Arabic yeh/kaf/teh marbuta; look-alikes that Urdu and Arabic keyboards and decorative fonts put into Persian
# text (heh doachashmee, heh goal, teh marbuta goal, swash kaf, alef wasla); heh with yeh above as heh with
# hamza above (the hamza then goes with the other diacritics); Latin and Arabic-Indic digits and the percent
# sign as Persian ones (the digits Persian text is set in, and the ones ids already used: Arabic-Indic digits
# were folded to Persian before Latin ones were; both tokenizers are byte-level BPE, so no digit is unknown).
# Letters that spell different words in the languages that write them (Kurdish ە ۆ ڵ ڤ, Urdu ے ٹ, Pashto ې)
# and the hamza carriers (أ ؤ ئ, آ) are left as written: see the README.
_LETTERS = {
    "\u064a": "\u06cc",  # ي -> ی
    "\u0649": "\u06cc",  # ى -> ی
    "\u0643": "\u06a9",  # ك -> ک
    "\u06aa": "\u06a9",  # ڪ (swash kaf) -> ک
    "\u0629": "\u0647",  # ة -> ه
    "\u06c3": "\u0647",  # ۃ (teh marbuta goal) -> ه
    "\u06be": "\u0647",  # ھ (heh doachashmee) -> ه
    "\u06c1": "\u0647",  # ہ (heh goal) -> ه
    "\u06c0": "\u0647\u0654",  # ۀ -> هٔ
    "\u0671": "\u0627",  # ٱ (alef wasla) -> ا
    "%": "\u066a",  # % -> ٪
    **{chr(0x0030 + i): digit for i, digit in enumerate(PERSIAN_DIGITS)},  # 0-9
    **{chr(0x0660 + i): digit for i, digit in enumerate(PERSIAN_DIGITS)},  # ٠-٩
}
# Harakat, tanwin, shadda, sukun, superscript alef, tatweel (kashida), and their presentation forms: dropped.
_DROP = re.compile("[\u064b-\u065f\u0670\u0640\ufc5e-\ufc63\ufcf2-\ufcf4\ufe70-\ufe7f]")


def _presentation_forms() -> dict[str, str]:
    """Each Arabic presentation form (U+FB50-U+FDFF, U+FE70-U+FEFF: the glyphs PDFs and old sites store) as
    its compatibility decomposition, letters then folded: 'ﮎ' -> 'ک', 'ﻻ' -> 'لا'. Only these blocks, so
    nothing else NFKC would change (fullwidth Latin, ligatures like 'ﬁ', superscripts) moves."""
    forms = {}
    for code in [*range(0xFB50, 0xFE00), *range(0xFE70, 0xFF00)]:
        char = chr(code)
        decomposed = unicodedata.normalize("NFKC", char)
        if decomposed != char and not _DROP.match(char):
            forms[char] = "".join(_LETTERS.get(c, c) for c in decomposed)
    return forms


_FOLDS = {**_LETTERS, **_presentation_forms()}
# A regex, not str.translate: ~10x faster on long texts, where few characters need folding.
_FOLD = re.compile("[" + "".join(re.escape(c) for c in sorted(_FOLDS)) + "]")
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
_ZWNJS = re.compile(f"{ZWNJ}+")


def _zwnj(match: re.Match) -> str:
    """A run of ZWNJ between two letters (or digits) is one ZWNJ; anywhere else (beside a space or punctuation, at
    an end) it joins nothing and is dropped, so «سلام‌ به» is «سلام به» and «کباب‌،» is «کباب،»."""
    text, start, end = match.string, match.start(), match.end()
    return ZWNJ if start and end < len(text) and text[start - 1].isalnum() and text[end].isalnum() else ""
# A query is a dish name or a question: longer than this (as given, before normalising) it is refused, so a
# huge string costs nothing. The model reads far less of it anyway (max_len tokens).
MAX_QUERY_CHARS = 100_000
EMPTY_TEXT = 'the text query is empty; give a few words, e.g. --text "قورمه سبزی"'


def normalize_text(text: str) -> str:
    """Clean a Persian text for the encoder: NFC, Persian letters and digits, no diacritics, tidy ZWNJ and spaces."""
    text = unicodedata.normalize("NFC", _INVISIBLE.sub("", text))  # invisibles first: one between a letter and its mark
    text = _DROP.sub("", _FOLD.sub(lambda m: _FOLDS[m.group()], text))
    if ZWNJ in text:
        text = _ZWNJS.sub(_zwnj, text)
    return " ".join(text.split())  # whitespace runs (tabs, newlines, NBSP...) -> one space, ends stripped


def query_text(text, max_chars: int) -> str:
    """What is read of a search text or question: normalised, then cut to `max_chars` (the encoder's and the
    lexical scorer's bound); a blank one (after normalising) or one over MAX_QUERY_CHARS is one line."""
    if not isinstance(text, str):
        raise FaclipError(EMPTY_TEXT)
    if len(text) > MAX_QUERY_CHARS:
        raise FaclipError(f"the text query is {len(text):,} characters long; give at most {MAX_QUERY_CHARS:,} "
                          "(a dish name or a question)")
    # Blank is what normalising leaves nothing of: the rule serve's schema states (its VISIBLE pattern), so a
    # client knows before it sends. Checked on what is read, so padding cannot hide the words or pass as them.
    read = normalize_text(normalize_text(text)[:max_chars])  # normalised again: a cut may end in a space
    if not read:
        raise FaclipError(EMPTY_TEXT)
    return read


def identity_key(text: str) -> str:
    """The form two texts must share to be the same passage or dish (ZWNJ≡space, Latin lower-cased)."""
    return normalize_text(text).replace(ZWNJ, " ").lower()  # a ZWNJ is left only between two letters: no new runs


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
