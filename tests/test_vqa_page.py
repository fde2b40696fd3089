"""The page asks about a photo: real Chromium (Playwright) against `python -m faclip serve`.

Uses the browser, page and screenshot fixtures of test_serve_page.py (skips as it does without chromium) and
conftest.py's `server`.
"""

import re
import urllib.parse

import httpx
import pytest
from test_serve_page import PHONE, browser, card_texts, no_sideways_scroll, page, shots  # noqa: F401

pytestmark = pytest.mark.xdist_group("serve")  # one worker runs them: they share conftest's one server

QUESTION = "زرشک و زعفران چه می‌دهند؟"  # lifts a زرشک پلو passage over the photo's first (آش رشته)
expect = pytest.importorskip("playwright.sync_api").expect  # waits by selectors: the page's CSP forbids eval


def wait_answered(tab) -> None:
    """Until the status line names the question and no search is in flight."""
    expect(tab.locator("#status")).to_contain_text("پرسش")
    expect(tab.locator("body")).not_to_have_class(re.compile("busy"))


def served_ask(server, artifacts, question: str, k: int = 5) -> list[dict]:
    response = httpx.post(server.url + "/search/image", params={"k": k}, data={"text": question},
                          files={"file": ("photo.jpg", artifacts.photo.read_bytes(), "image/jpeg")}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["hits"]


def test_a_photo_and_a_question_show_the_apis_answer(page, server, artifacts, shots):
    page.goto("/")
    assert page.locator("#ask-form").is_hidden()  # nothing to ask about before a photo
    page.set_input_files("#file", str(artifacts.photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.wait_for_selector(".card")
    photo_only = [c["id"] for c in card_texts(page)]
    assert page.locator("#ask-form").is_visible()

    page.fill("#question", QUESTION)
    page.click("#ask")
    wait_answered(page)
    expected = served_ask(server, artifacts, QUESTION)
    cards = card_texts(page)
    assert [c["id"] for c in cards] == [h["passage_id"] for h in expected]
    assert [c["id"] for c in cards] != photo_only  # the question changed the answer
    assert cards[0]["passage"].startswith("زرشک")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 96  # the photo stays shown
    assert page.input_value("#question") == QUESTION
    assert no_sideways_scroll(page)
    page.screenshot(path=shots / "ask-laptop.png", full_page=True)

    page.select_option("#k", "3")  # a changed option asks again, the same photo and question
    expect(page.locator(".card")).to_have_count(3)
    expect(page.locator("body")).not_to_have_class(re.compile("busy"))
    assert [c["id"] for c in card_texts(page)] == [h["passage_id"] for h in served_ask(server, artifacts, QUESTION, 3)]


def test_a_blank_question_is_refused_on_the_page_and_a_text_search_hides_the_question_box(page, artifacts, shots):
    page.goto("/")
    page.set_input_files("#file", str(artifacts.photo))
    page.wait_for_selector(".card")
    page.fill("#question", " \u200c ")
    page.click("#ask")
    error = page.wait_for_selector("#error:not([hidden])")
    assert "پرسش خالی است" in error.text_content()
    page.fill("#q", "آش رشته")
    page.click("#go")
    page.wait_for_selector(".card")
    expect(page.locator("body")).not_to_have_class(re.compile("busy"))
    assert page.locator("#ask-form").is_hidden() and page.locator("#preview").is_hidden()
    assert "?q=" in page.url


def test_q_in_the_address_still_searches_text_alone(page):
    page.goto("/?" + urllib.parse.urlencode({"q": "کباب کوبیده", "k": "3"}))
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 3 and page.locator("#ask-form").is_hidden()


def test_phone_width_asks_in_one_column(browser, server, artifacts, shots):  # noqa: F811
    context = browser.new_context(viewport=PHONE, base_url=server.url, is_mobile=True, has_touch=True)
    tab = context.new_page()
    tab.goto("/")
    tab.set_input_files("#file", str(artifacts.photo))
    tab.wait_for_selector(".card")
    tab.fill("#question", QUESTION)
    tab.click("#ask")
    wait_answered(tab)
    assert no_sideways_scroll(tab)
    box = tab.locator("#question").bounding_box()
    assert box["width"] > PHONE["width"] / 2  # the question box is not squeezed
    tab.screenshot(path=shots / "ask-phone.png", full_page=True)
    context.close()
