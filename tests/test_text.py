import pytest

from faclip.errors import FaclipError
from faclip.text import (MAX_QUERY_CHARS, ZWNJ, food_id_for, identity_key, invalid_character, is_blank, normalize_text,
                         passage_id_for, query_text)


def test_arabic_letters_become_persian():
    assert normalize_text("كباب كوبيده") == "کباب کوبیده"
    assert normalize_text("ة ى ٣") == "ه ی ۳"


def test_diacritics_and_tatweel_dropped_zwnj_between_letters_kept():
    assert normalize_text("كَبـــاب") == "کباب"
    assert normalize_text(f"می{ZWNJ}{ZWNJ}خورند") == f"می{ZWNJ}خورند"
    assert normalize_text(f"{ZWNJ}{ZWNJ}سلام{ZWNJ}") == "سلام"


def test_whitespace_collapsed_and_invisibles_removed():
    assert normalize_text("\ufeff  آش \n\t رشته\u200b ") == "آش رشته"


def test_food_id_merges_spelling_variants():
    variants = ["قورمه‌سبزی", "قورمه سبزي", "  قورمه   سبزی ", "قورمه\u200cسبزى", "قُورمه سبزی"]
    assert len({food_id_for(v) for v in variants}) == 1
    assert food_id_for("قورمه سبزی") != food_id_for("قیمه")


def test_latin_lowercased_in_identity_only():
    assert identity_key("Kabab Koobideh") == identity_key("kabab koobideh")
    assert normalize_text("Kabab") == "Kabab"


def test_passage_id_stable_and_variant_insensitive():
    a = passage_id_for("کباب کوبیده را با نان می‌خورند.")
    assert a == passage_id_for("كباب كوبيده را با نان مي خورند.")
    assert a != passage_id_for("کباب برگ را با نان می‌خورند.")
    assert len(a) == 16 and int(a, 16) >= 0


# Each row: spellings of one dish or passage as the web writes them. They must be one identity (food_id,
# passage_id) and, as every fold here only changes spelling, the encoders must read the same text.
SAME = [
    pytest.param("کباب کوبیده", "ﮐﺒﺎﺏ ﮐﻮﺑﯿﺪﻩ", "ﮎﺏﺍﺏ ﮎﻭﺏﯼﺩﻩ", "كباب كوبيده", id="presentation forms, Arabic kaf/yeh"),
    pytest.param("سالاد شیرازی", "ﺳﺎﻻﺩ ﺷﯿﺮﺍﺯﯼ", "سالاد شيرازى", id="lam-alef ligature, alef maksura"),
    pytest.param("سالاد شماره ۳", "سالاد شماره 3", "سالاد شماره ٣", id="digits in three scripts"),
    pytest.param("۱۲۵۰ گرم، ۵۰٪ چربی", "1250 گرم، 50% چربی", "١٢٥٠ گرم، ٥٠٪ چربی", id="numbers and percent"),
    pytest.param("کله پاچه", "کلۀ پاچه", "کلهٔ پاچه", "ﮐﻠﮥ ﭘﺎﭼﻪ", "كلة پاچه", id="heh with yeh or hamza above"),
    pytest.param("سلام به همه", f"سلام{ZWNJ} به {ZWNJ}همه", f"{ZWNJ}سلام {ZWNJ}{ZWNJ} به همه{ZWNJ}",
                 id="ZWNJ beside spaces"),
    pytest.param("«کباب»، برنج", f"«{ZWNJ}کباب{ZWNJ}»{ZWNJ}، برنج", id="ZWNJ beside punctuation"),
    pytest.param("هویج پلو", "ھویج پلو", "هویج پلوٓ", id="heh doachashmee"),
    pytest.param("شله زرد", "شلہ زرد", "شلۃ زرد", id="heh goal, teh marbuta goal"),
    pytest.param("کشک بادمجان", "ڪشڪ بادمجان", id="swash kaf"),
    pytest.param("سالاد اولویه", "سالاد ٱولویه", "سالاد ﭐﻭﻟﻮﯾﻪ", id="alef wasla"),
    pytest.param("کباب", "کبﹶاب", "كﹷبﹼاب", id="presentation forms of diacritics"),
]
# Spellings that must stay apart: different dishes one letter apart, different numbers, and a fold left out.
APART = [
    ("شیر برنج", "سیر برنج"),  # milk pudding, garlic rice: one letter
    ("قیمه", "قلیه"),
    ("کباب برگ", "کباب ترگ"),
    ("سالاد شماره ۳", "سالاد شماره 8"),
    ("۱۲ عدد", "۱۲۰ عدد"),
    ("3 پیمانه", "۳۰ پیمانه"),
    ("۲.۵ کیلو", "۲۵ کیلو"),
    ("آش", "اش"),  # آ is not folded to ا: a soup and a pronoun
    ("سالاد شماره ۳", "سالاد شماره ۳ ﷺ"),  # a ligature is a word, not nothing
]


@pytest.mark.parametrize("spellings", [p.values for p in SAME], ids=[p.id for p in SAME])
def test_spellings_of_one_dish_are_one_identity_and_one_encoder_text(spellings):
    plain = spellings[0]
    assert normalize_text(plain) == plain  # the first spelling of each row is the folded form
    for spelling in spellings:
        assert normalize_text(spelling) == plain, (spelling, normalize_text(spelling))
        assert food_id_for(spelling) == food_id_for(plain) and passage_id_for(spelling) == passage_id_for(plain)


@pytest.mark.parametrize("one, other", APART)
def test_different_dishes_and_numbers_stay_apart(one, other):
    assert food_id_for(one) != food_id_for(other)
    assert passage_id_for(one) != passage_id_for(other)


def test_zwnj_between_letters_is_kept_for_the_encoder_and_is_a_space_for_identity():
    assert normalize_text(f"می{ZWNJ}خورند") == f"می{ZWNJ}خورند" != normalize_text("می خورند")
    assert identity_key(f"می{ZWNJ}خورند") == identity_key("می خورند") == "می خورند"
    assert normalize_text(f"۱۰{ZWNJ}تا") == f"۱۰{ZWNJ}تا"  # a digit is a letter here


def test_only_the_arabic_presentation_blocks_are_decomposed():
    # NFKC would turn these into 'fi', 'A', '2', '1/2': they are not Persian spellings, and stay as written.
    for text in ["ﬁ", "Ａ", "²", "½", "ｶ", "①"]:
        assert normalize_text(text) == text


def test_normalisation_is_idempotent():
    texts = [s for p in SAME for s in p.values] + [t for pair in APART for t in pair] + [
        "Kabab Koobideh B12", f"a{ZWNJ}​{ZWNJ}b", "e​́", "ﺍٔ", "كَبـــاب ﹰ ٱ"]
    for text in texts:
        once = normalize_text(text)
        assert normalize_text(once) == once, repr(text)
        assert identity_key(identity_key(text)) == identity_key(text), repr(text)


def test_every_presentation_form_folds_to_text_that_is_blank_exactly_when_the_form_is():
    from faclip.text import _FOLDS
    for char in _FOLDS:
        assert (normalize_text(char) == "") == is_blank(char), f"U+{ord(char):04X}"
        assert normalize_text(normalize_text(char)) == normalize_text(char), f"U+{ord(char):04X}"


BLANKS = ["", "   ", "\u200c", " \u200c \u200c ", "\u0640\u0640", "\u064e\u0650\u0651", "\u200b\u200d\u200e\u200f",
          "\ufeff\u00ad", "\u202b\u202c\u2066\u2069", "\u2060\u2800\u3164", "\t\n\r\x0b\x0c", "\x00\x07\x1b\x7f"]


@pytest.mark.parametrize("text", BLANKS)
def test_blank_after_normalisation_is_blank_everywhere(text):
    assert is_blank(text)
    assert identity_key(text) == "" and normalize_text(text) == ""
    assert food_id_for(text) == ""


@pytest.mark.parametrize("text", ["a", "۱", ".", "🍲", "\u200cسلام\u200c", "\u0640ش"])
def test_anything_readable_is_not_blank(text):
    assert not is_blank(text)
    assert identity_key(text) != ""


def test_invisible_and_control_characters_never_reach_ids():
    plain = "قورمه سبزی"
    for junk in ["\u202b", "\u2066", "\u2060", "\x00", "\x1b", "\u034f", "\U000e0041"]:
        assert food_id_for(plain[:3] + junk + plain[3:]) == food_id_for(plain), repr(junk)
        assert passage_id_for(plain + junk) == passage_id_for(plain), repr(junk)


def test_invalid_character_finds_nul_controls_and_lone_surrogates_but_not_whitespace():
    assert invalid_character("ab\x00c") == "U+0000 at character 3"
    assert invalid_character("\x1b[31m") == "U+001B at character 1"
    assert invalid_character("x\ud800") == "U+D800 at character 2"
    assert invalid_character("tab\tnewline\ncr\r vt\x0b ff\x0c nbsp\xa0 zwnj\u200c") is None



# --- a query: normalised first, then checked and cut (the rule the CLI, the Retriever and the server share) --

READ = 77 * 64  # what the model reads of a query: max_len tokens, at CHARS_PER_TOKEN_BOUND characters each
PADDING = [" ", "\u00a0", "\t", "\n", ZWNJ, "\u200b", "\u200d", "\u200e", "\u200f", "\u061c", "\u202b", "\u202c",
           "\u2066", "\u2069", "\u2060", "\ufeff", "\u00ad", "\u0640", "\u064e", "\u0651", "\x00"]


@pytest.mark.parametrize("pad", PADDING, ids=lambda pad: f"U+{ord(pad):04X}")
def test_a_padded_query_reads_as_its_words(pad):
    # 9,000 invisible characters used to fill what the model reads: the query read as empty.
    for words in ["فسنجان", "کباب کوبیده", "!"]:
        assert query_text(pad * 9000 + words, READ) == words
        assert query_text(words + pad * 9000, READ) == words
        assert query_text(pad * 9000 + words + " " + pad * 9000 + words, READ) == normalize_text(f"{words} {pad}{words}")


@pytest.mark.parametrize("text", BLANKS + [pad * 9000 for pad in PADDING])
def test_a_blank_query_is_refused_however_long(text):
    with pytest.raises(FaclipError, match="the text query is empty"):
        query_text(text, READ)


def test_what_the_model_reads_is_cut_after_normalising_and_never_blank():
    words = "قورمه سبزی " * 1000  # longer than READ once normalised
    read = query_text(words, READ)
    assert len(read) <= READ and words.startswith(read) and read == normalize_text(read)
    assert query_text(read, READ) == read  # what is read reads the same again: the encoder's own cut is a no-op
    # A run of marks that normalising keeps (they render, as accents) is read as written: what is checked is what
    # is read, cut where the model cuts
    assert query_text("\u0301" * 9000 + "فسنجان", READ) == "\u0301" * READ


@pytest.mark.parametrize("text", [None, 5, b"kabab"])
def test_a_query_that_is_not_text_is_refused(text):
    with pytest.raises(FaclipError, match="the text query is empty"):
        query_text(text, READ)


def test_a_huge_query_is_one_line_at_once():
    with pytest.raises(FaclipError, match=f"give at most {MAX_QUERY_CHARS:,}") as err:
        query_text("آش " * 10_000_000, READ)
    assert "\n" not in str(err.value)
    assert query_text("آ" * MAX_QUERY_CHARS, READ) == "آ" * READ
