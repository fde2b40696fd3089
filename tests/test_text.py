import pytest

from faclip.text import ZWNJ, food_id_for, identity_key, invalid_character, is_blank, normalize_text, passage_id_for


def test_arabic_letters_become_persian():
    assert normalize_text("كباب كوبيده") == "کباب کوبیده"
    assert normalize_text("ة ى ٣") == "ه ی ۳"


def test_diacritics_and_tatweel_dropped_zwnj_kept():
    assert normalize_text("كَبـــاب") == "کباب"
    assert normalize_text(f"می {ZWNJ} خورند") == f"می{ZWNJ}خورند"
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

