from faclip.text import ZWNJ, food_id_for, identity_key, normalize_text, passage_id_for


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
