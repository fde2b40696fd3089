"""Persian text normalisation: one function for what the model reads, one for identity keys.

Real scrapes mix Arabic yeh/kaf (ي ك) with Persian (ی ک), ZWNJ with spaces, and carry
diacritics and tatweel. `normalize_text` cleans what the encoder reads (it keeps ZWNJ, which
carries meaning in Persian words); `identity_key` goes further (ZWNJ≡space, Latin lower-cased)
and decides when two passages or two titles are the same.
"""

import hashlib
import re
import unicodedata

ZWNJ = "\u200c"
# Arabic code points and their Persian forms; Arabic-Indic digits to Persian digits.
_LETTERS = {
    "\u064a": "\u06cc",  # ي -> ی
    "\u0649": "\u06cc",  # ى -> ی
    "\u0643": "\u06a9",  # ك -> ک
    "\u0629": "\u0647",  # ة -> ه
    **{chr(0x0660 + i): chr(0x06F0 + i) for i in range(10)},
}
_TRANSLATE = str.maketrans(_LETTERS)
# Harakat, tanwin, shadda, sukun, superscript alef, and tatweel (kashida): dropped.
_DROP = re.compile("[\u064b-\u065f\u0670\u0640]")
# Zero-width joiners/marks and BOM that scrapes leave behind (ZWNJ itself is handled apart).
_INVISIBLE = re.compile("[\u200b\u200d\u200e\u200f\ufeff\u00ad]")
_ZWNJ_RUN = re.compile(f"\\s*{ZWNJ}[\\s{ZWNJ}]*")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Clean a Persian text for the encoder: NFC, Persian letters, no diacritics, tidy ZWNJ and spaces."""
    text = unicodedata.normalize("NFC", text).translate(_TRANSLATE)
    text = _INVISIBLE.sub("", _DROP.sub("", text))
    text = _ZWNJ_RUN.sub(ZWNJ, text)  # a ZWNJ next to spaces, or repeated, is one ZWNJ
    text = _SPACES.sub(" ", text).strip()
    return text.strip(ZWNJ).strip()


def identity_key(text: str) -> str:
    """The form two texts must share to be the same passage or dish (ZWNJ≡space, Latin lower-cased)."""
    return _SPACES.sub(" ", normalize_text(text).replace(ZWNJ, " ")).strip().lower()


def food_id_for(title: str) -> str:
    """The dish id: the identity form of its title, readable (e.g. 'قورمه سبزی')."""
    return identity_key(title)


def passage_id_for(passage: str) -> str:
    """Stable id of a passage: 16 hex digits of sha256 over its identity form."""
    return hashlib.sha256(identity_key(passage).encode("utf-8")).hexdigest()[:16]
