// The faclip search page: text, photo, or a photo and a question about it in; passage cards out.
// Plain JS, no dependencies.
// Every value from the API (titles, passages, error details) goes into the page as text
// (textContent), never as HTML: the passages are scraped data.
"use strict";

const $ = (id) => document.getElementById(id);
const faNumber = new Intl.NumberFormat("fa-IR");
const faScore = new Intl.NumberFormat("fa-IR", { minimumFractionDigits: 3, maximumFractionDigits: 3 });

let maxUploadMb = null; // from /info
let lastQuery = null; // {text} or {file, question}: rerun when k or per-dish changes
let previewUrl = null;
let pending = null; // AbortController of the search in flight

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text) {
  $("status").textContent = text;
}

function showError(message) {
  const box = $("error");
  box.textContent = "";
  const detail = el("p", "error-detail", message);
  detail.dir = "auto"; // the API's details are English; the page's own are Persian
  box.append(el("strong", "error-title", "خطا"), detail);
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

function options() {
  const params = new URLSearchParams({ k: $("k").value });
  if ($("per-dish").value) params.set("per_dish", $("per-dish").value);
  return params;
}

// The API's own words for an error: {"detail": "..."}; a non-JSON reply says its HTTP status.
async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body && typeof body.detail === "string") return body.detail;
    if (body && body.detail !== undefined) return JSON.stringify(body.detail);
  } catch (_) {
    // not JSON: fall through
  }
  return `سرور پاسخ ${faNumber.format(response.status)} داد (${response.statusText || "بدون توضیح"})`;
}

async function runSearch(url, init, label) {
  if (pending) pending.abort();
  pending = new AbortController();
  const controller = pending;
  clearError();
  setStatus(`در حال جستجو برای ${label}…`);
  document.body.classList.add("busy");
  $("go").disabled = true;
  $("ask").disabled = true;
  try {
    const response = await fetch(url, { ...init, signal: controller.signal });
    if (!response.ok) {
      const message = await errorMessage(response);
      if (controller !== pending) return;
      $("results").textContent = "";
      setStatus("");
      showError(message);
      return;
    }
    const body = await response.json();
    if (controller !== pending) return;
    renderHits(body.hits);
    const count = body.hits.length;
    setStatus(count
      ? `${faNumber.format(count)} متن برای ${label} · ${faNumber.format(Math.round(body.took_ms))} میلی‌ثانیه`
      : `متنی برای ${label} پیدا نشد`);
  } catch (err) {
    if (err.name === "AbortError") return;
    setStatus("");
    showError("ارتباط با سرور برقرار نشد؛ آیا `python -m faclip serve` هنوز اجرا می‌شود؟");
  } finally {
    if (controller === pending) {
      pending = null;
      document.body.classList.remove("busy");
      $("go").disabled = false;
      $("ask").disabled = false;
    }
  }
}

function renderHits(hits) {
  const list = $("results");
  list.textContent = "";
  for (const hit of hits) {
    const card = el("li", "card");
    card.dataset.passageId = hit.passage_id;

    const head = el("div", "card-head");
    const rank = el("span", "rank", faNumber.format(hit.rank));
    rank.setAttribute("aria-label", `رتبهٔ ${faNumber.format(hit.rank)}`);
    const title = el("h2", "title", hit.title);
    title.dir = "auto";
    head.append(rank, title);

    const score = el("div", "score");
    const bar = el("div", "bar");
    const fill = el("span", "fill");
    // Cosine similarity: the bar shows 0..1 (a negative score is an empty bar). CSSOM, not a style attribute.
    fill.style.width = `${Math.max(0, Math.min(1, hit.score)) * 100}%`;
    bar.append(fill);
    bar.setAttribute("role", "img");
    bar.setAttribute("aria-label", `شباهت ${faScore.format(hit.score)}`);
    score.append(bar, el("span", "score-num", faScore.format(hit.score)));

    const passage = el("p", "passage", hit.passage_text);
    passage.dir = "auto";

    card.append(head, score, passage);
    list.append(card);
  }
}

function searchText(text, { updateUrl = true } = {}) {
  const query = text.trim();
  if (!query) {
    showError("متن جستجو خالی است؛ چند کلمه بنویسید، مثلاً «قورمه سبزی».");
    return;
  }
  lastQuery = { text };
  clearPhoto();
  if (updateUrl) {
    // The address holds the search, so it can be linked and bookmarked.
    const address = new URLSearchParams({ q: text, ...Object.fromEntries(options()) });
    history.replaceState(null, "", `?${address}`);
  }
  const params = options();
  params.set("text", text);
  const label = query.length > 40 ? `${query.slice(0, 40)}…` : query;
  runSearch(`/search?${params}`, { method: "GET" }, `«${label}»`);
}

// A photo alone, or with a question about it: one POST /search/image (multipart `file`, and `text`).
function searchPhoto(file, question = "") {
  if (!file) return;
  clearError();
  if (maxUploadMb !== null && file.size > maxUploadMb * 1024 * 1024) {
    showError(`این عکس ${faNumber.format(Math.ceil(file.size / 1024 / 1024))} مگابایت است؛ ` +
      `سرور تا ${faNumber.format(maxUploadMb)} مگابایت می‌پذیرد. عکس کوچک‌تری بدهید.`);
    return;
  }
  if (!lastQuery || lastQuery.file !== file) {
    clearPhoto();
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl; // shown once it decodes (the "load" handler): not a broken icon for a non-image
    $("file-name").textContent = file.name;
    $("question").value = question;
  }
  lastQuery = { file, question };
  $("ask-form").hidden = false; // a photo is chosen: it can be asked about
  $("q").value = "";
  history.replaceState(null, "", location.pathname);
  const form = new FormData();
  form.append("file", file, file.name || "photo");
  const asked = question.trim();
  if (asked) form.append("text", question);
  const label = asked ? `عکس و پرسش «${asked.length > 40 ? `${asked.slice(0, 40)}…` : asked}»` : "عکس";
  runSearch(`/search/image?${options()}`, { method: "POST", body: form }, label);
}

function askAboutPhoto() {
  if (!lastQuery || !lastQuery.file) return;
  const question = $("question").value;
  if (!question.replace(/[\s\u200c]/g, "")) { // spaces and ZWNJ only: nothing to ask (the API would say so too)
    showError("پرسش خالی است؛ چیزی دربارهٔ عکس بپرسید، مثلاً «این غذا چطور پخته می‌شود؟».");
    return;
  }
  searchPhoto(lastQuery.file, question);
}

function clearPhoto() {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  const preview = $("preview");
  preview.hidden = true;
  preview.removeAttribute("src");
  $("file-name").textContent = "";
  $("ask-form").hidden = true;
  $("question").value = "";
}

function rerun() {
  if (!lastQuery) return;
  if (lastQuery.file) searchPhoto(lastQuery.file, lastQuery.question);
  else searchText(lastQuery.text);
}

async function loadInfo() {
  const info = $("info");
  try {
    const response = await fetch("/info");
    if (!response.ok) throw new Error(await errorMessage(response));
    const facts = await response.json();
    maxUploadMb = facts.max_upload_mb;
    info.textContent = "";
    const model = facts.text_source ? `${facts.text_model} (${facts.text_source})` : facts.text_model;
    const parts = [
      ["مدل", model],
      ["متن‌ها", `${faNumber.format(facts.passages)} از ${faNumber.format(facts.dishes)} غذا`],
      ["نمایه", `${facts.factory} · بُعد ${faNumber.format(facts.dim)}`],
    ];
    for (const [name, value] of parts) {
      const item = el("span", "fact");
      const valueNode = el("bdi", null, value);
      item.append(el("span", "fact-name", `${name}: `), valueNode);
      info.append(item);
    }
    info.title = `index ${facts.index_sha256.slice(0, 12)} · model ${facts.model_sha256.slice(0, 12)} · ` +
      `docstore ${facts.docstore_sha256.slice(0, 12)}`;
  } catch (err) {
    info.textContent = `مشخصات مدل خوانده نشد: ${err.message}`;
  }
}

function setUpDrop() {
  const drop = $("drop");
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    const file = event.dataTransfer.files[0];
    if (file) searchPhoto(file);
  });
  $("preview").addEventListener("load", () => { $("preview").hidden = false; });
  $("preview").addEventListener("error", () => { $("preview").hidden = true; });
  $("file").addEventListener("change", (event) => {
    searchPhoto(event.target.files[0]);
    event.target.value = ""; // choosing the same photo again searches again
  });
}

function start() {
  $("text-form").addEventListener("submit", (event) => {
    event.preventDefault();
    searchText($("q").value);
  });
  $("ask-form").addEventListener("submit", (event) => {
    event.preventDefault();
    askAboutPhoto();
  });
  $("k").addEventListener("change", rerun);
  $("per-dish").addEventListener("change", rerun);
  setUpDrop();
  loadInfo();

  // /?q=...&k=...&per_dish=...: run that search on load.
  const params = new URLSearchParams(location.search);
  const k = params.get("k");
  if (k && [...$("k").options].some((o) => o.value === k)) $("k").value = k;
  const perDish = params.get("per_dish");
  if (perDish && [...$("per-dish").options].some((o) => o.value === perDish)) $("per-dish").value = perDish;
  const q = params.get("q");
  if (q !== null && q.trim()) {
    $("q").value = q;
    searchText(q, { updateUrl: false });
  }
}

start();
