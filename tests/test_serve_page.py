"""The search page in a real browser: Debian's chromium, driven by Playwright, against `python -m faclip serve`
(conftest.py's `server`, shared with the API tests).

Each state is saved as a screenshot under the test's temp folder (printed; `pytest -s` shows where).
Without chromium the module skips with one line naming the install command (`.ci/run` installs it).
"""

import os
import shutil
import urllib.parse

import httpx
import pytest
from serve_fixtures import MARKUP_PASSAGE, MARKUP_TITLE

pytestmark = pytest.mark.xdist_group("serve")  # one worker runs them: they share conftest's one server

CHROMIUM = os.environ.get("FACLIP_CHROMIUM", "/usr/bin/chromium")
if not shutil.which(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not found; install it with `apt-get install -y chromium chromium-driver`",
                allow_module_level=True)
playwright = pytest.importorskip("playwright.sync_api", reason="pip install -r requirements-dev.txt")

# Headless, offline, quiet: no first-run work, no network calls of the browser's own.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAPTOP = {"width": 1366, "height": 860}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser():
    with playwright.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    folder = tmp_path_factory.mktemp("page_screenshots")
    print(f"\npage screenshots in {folder}")
    return folder


@pytest.fixture
def page(browser, server):
    """A fresh page at laptop width that fails the test on a script error, a CSP violation or a dialog."""
    context = browser.new_context(viewport=LAPTOP, base_url=server.url)
    tab = context.new_page()
    problems = []
    tab.on("pageerror", lambda err: problems.append(f"script error: {err}"))
    tab.on("console", lambda msg: "Content Security Policy" in msg.text and problems.append(msg.text))
    tab.on("dialog", lambda dialog: (problems.append(f"dialog: {dialog.message}"), dialog.dismiss()))
    yield tab
    context.close()
    assert not problems, problems


def card_texts(page) -> list[dict]:
    return page.eval_on_selector_all(".card", """cards => cards.map(card => ({
        id: card.dataset.passageId, title: card.querySelector('.title').textContent,
        passage: card.querySelector('.passage').textContent}))""")


def no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


def test_typing_a_dish_name_shows_cards_in_the_apis_order(page, server, shots):
    page.goto("/")
    page.fill("#q", "کباب کوبیده")
    page.click("#go")
    page.wait_for_selector(".card")
    expected = httpx.get(server.url + "/search", params={"text": "کباب کوبیده", "k": 5}).json()["hits"]
    assert [c["id"] for c in card_texts(page)] == [h["passage_id"] for h in expected]
    assert card_texts(page)[0]["title"] == expected[0]["title"]
    assert page.locator(".card .rank").first.text_content() == "۱"  # Persian digits
    assert page.locator(".card .bar .fill").count() == 5
    assert page.evaluate("document.documentElement.dir") == "rtl"
    assert "?q=" in page.url  # the search is in the address, to link or bookmark
    assert no_sideways_scroll(page)
    page.screenshot(path=shots / "text-search-laptop.png", full_page=True)


def test_photo_upload_shows_the_photo_and_its_cards(page, server, artifacts, shots):
    page.goto("/")
    page.set_input_files("#file", str(artifacts.photo))
    page.wait_for_selector("#preview:not([hidden])")
    page.wait_for_selector(".card")
    assert page.evaluate("document.getElementById('preview').naturalWidth") == 96  # the photo, decoded
    expected = httpx.post(server.url + "/search/image", params={"k": 5},
                          files={"file": ("photo.jpg", artifacts.photo.read_bytes(), "image/jpeg")}).json()["hits"]
    assert [c["id"] for c in card_texts(page)] == [h["passage_id"] for h in expected]
    page.screenshot(path=shots / "photo-search-laptop.png", full_page=True)


def test_an_api_error_is_shown_in_words(page, shots):
    page.goto("/")
    page.set_input_files("#file", {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo"})
    error = page.wait_for_selector("#error:not([hidden])")
    assert "cannot read image" in error.text_content()  # the API's detail, as sent
    assert page.locator(".card").count() == 0 and page.locator("#preview").is_hidden()
    page.screenshot(path=shots / "api-error-laptop.png", full_page=True)


def test_q_in_the_address_searches_on_load_and_shows_the_index_facts(page, artifacts, shots):
    page.goto("/?" + urllib.parse.urlencode({"q": "آش رشته", "k": "3"}))
    page.wait_for_selector(".card")
    assert page.locator(".card").count() == 3 and page.input_value("#q") == "آش رشته"
    info = page.locator("#info").text_content()
    passages = str(len(artifacts.docstore)).translate(str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹"))
    assert passages in info and "Flat" in info and str(artifacts.text_dir) in info
    page.screenshot(path=shots / "q-on-load-laptop.png", full_page=True)


def test_markup_in_a_passage_is_shown_as_text_and_runs_nothing(page, shots):
    page.goto("/?" + urllib.parse.urlencode({"q": MARKUP_PASSAGE, "k": "1"}))
    page.wait_for_selector(".card")
    card = card_texts(page)[0]
    assert (card["title"], card["passage"]) == (MARKUP_TITLE, MARKUP_PASSAGE)  # the characters, as text
    assert page.locator("#results img, #results script, #results b").count() == 0
    page.wait_for_timeout(200)  # an onerror would have fired by now
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=shots / "markup-as-text-laptop.png", full_page=True)


def test_phone_width_is_one_column_without_sideways_scrolling(browser, server, shots):
    context = browser.new_context(viewport=PHONE, base_url=server.url, is_mobile=True, has_touch=True)
    tab = context.new_page()
    tab.goto("/?" + urllib.parse.urlencode({"q": "زرشک پلو"}))
    tab.wait_for_selector(".card")
    lefts = tab.eval_on_selector_all(".card", "cards => cards.map(c => Math.round(c.getBoundingClientRect().left))")
    assert len(set(lefts)) == 1  # one column
    assert no_sideways_scroll(tab)
    search_box = tab.locator("#q").bounding_box()
    assert search_box["width"] > PHONE["width"] / 2  # the text field is not squeezed beside the photo zone
    tab.screenshot(path=shots / "text-search-phone.png", full_page=True)
    context.close()


def test_docs_page_renders_offline_under_the_csp(page, server, shots):
    outside = []

    def only_this_server(route):
        if route.request.url.startswith(server.url):
            return route.continue_()
        outside.append(route.request.url)
        return route.abort()

    page.context.route("**/*", only_this_server)  # no CDN: anything not from this server fails
    page.goto("/docs")
    page.wait_for_selector(".opblock-summary-path")
    paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent.trim())")
    assert {"/search", "/search/image", "/readyz", "/metrics"} <= set(paths), paths
    page.click(".opblock-post .opblock-summary")  # POST /search opens, with its responses
    page.wait_for_selector(".responses-table")
    assert {"400", "413", "422"} <= set(page.eval_on_selector_all(
        ".opblock.is-open .response-col_status", "els => els.map(e => e.textContent.trim())"))
    assert not outside, outside
    page.screenshot(path=shots / "docs-laptop.png", full_page=False)
