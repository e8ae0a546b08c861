// The page of `mp4sr serve`: search the catalogue, build a history, see the top-k after it, add a new
// item and see where it ranks. Every request goes to the service that served the page (relative URLs).
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  history: [],          // items of the history, oldest first: {id, title, text, has_image}
  known: new Map(),     // every item seen so far, by id
  added: new Set(),     // ids added from this page
  lastAdded: null,      // the id whose rank is shown under the new-item form
  tickets: {search: 0, recs: 0},
};

async function api(path, body) {
  const init = body === undefined ? {} :
    {method: "POST", headers: {"content-type": "application/json"}, body: JSON.stringify(body)};
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.detail || `${res.status} ${res.statusText}`);
  return data;
}

function showError(err) {
  $("error").hidden = !err;
  $("error").textContent = err ? String(err.message || err) : "";
}

function remember(items) {
  for (const item of items) state.known.set(item.id, item);
  return items;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function thumb(item) {
  if (item.has_image) {
    const img = el("img", "thumb");
    img.src = `items/${encodeURIComponent(item.id)}/image`;
    img.alt = item.title;
    return img;
  }
  return el("div", "thumb", (item.title || item.id).trim().charAt(0).toUpperCase());
}

function describe(item) {
  const what = el("div", "what");
  what.append(el("span", "title", item.title), el("span", "id", item.id));
  if (state.added.has(item.id)) what.querySelector(".id").after(el("span", "badge", "new"));
  return what;
}

function itemRow(item) {
  const row = el("li");
  row.title = item.text || item.title;
  row.dataset.id = item.id;
  row.append(thumb(item), describe(item));
  return row;
}

// ------------------------------------------------------------------ search

async function search() {
  const ticket = ++state.tickets.search;
  const q = $("search").value.trim();
  try {
    const res = await api(`catalogue/search?${new URLSearchParams({q, limit: 12})}`);
    if (ticket !== state.tickets.search) return;  // a newer search is under way
    $("search-note").textContent = q ? (res.total === 1 ? "1 item matches" : `${res.total} items match`) +
      (res.total > res.items.length ? `, the ${res.items.length} best shown` : "") : "Popular items: pick one, or search";
    $("results").replaceChildren(...remember(res.items).map((item) => {
      const row = itemRow(item);
      row.addEventListener("click", () => addToHistory(item));
      return row;
    }));
  } catch (err) {
    showError(err);
  }
}

// ------------------------------------------------------------------ history

function addToHistory(item) {
  state.history = state.history.filter((h) => h.id !== item.id).concat([item]);  // again: now the latest
  renderHistory();
  refresh();
}

function renderHistory() {
  $("history-empty").hidden = state.history.length > 0;
  $("history").replaceChildren(...state.history.map((item) => {
    const row = itemRow(item);
    const remove = el("button", "remove", "×");
    remove.type = "button";
    remove.title = "remove from the history";
    remove.addEventListener("click", () => {
      state.history = state.history.filter((h) => h.id !== item.id);
      renderHistory();
      refresh();
    });
    row.append(remove);
    return row;
  }));
}

// ------------------------------------------------------------------ recommendations

async function refresh() {
  const ticket = ++state.tickets.recs;
  const k = Number($("k").value);
  const excludeSeen = $("exclude-seen").checked;
  const history = state.history.map((item) => item.id);
  try {
    const res = await api("recommend", {history, k, exclude_seen: excludeSeen});
    const unknown = res.items.map((r) => r.item_id).filter((id) => !state.known.has(id));
    if (unknown.length) {
      remember((await api(`catalogue/items?${new URLSearchParams(unknown.map((id) => ["id", id]))}`)).items);
    }
    if (ticket !== state.tickets.recs) return;  // a newer request is under way
    renderRecs(res, history.length, excludeSeen);
    if (state.lastAdded) await showRank(state.lastAdded);
    showError(null);
  } catch (err) {
    showError(err);
  }
}

function renderRecs(res, nHistory, excludeSeen) {
  $("recs-note").textContent = res.fallback ? "The most popular items (the history is empty)." :
    `The ${res.items.length} best after ${nHistory} item${nHistory === 1 ? "" : "s"}` +
    (excludeSeen ? ", items of the history left out." : ", items of the history included.");
  const scores = res.items.map((r) => r.score);
  const [low, high] = [Math.min(...scores), Math.max(...scores)];
  $("recs").replaceChildren(...res.items.map((r, n) => {
    const item = state.known.get(r.item_id);
    const card = el("li", state.added.has(item.id) ? "rec added" : "rec");
    card.title = item.text || item.title;
    card.dataset.id = item.id;
    const score = el("span", "score", r.score.toFixed(3));
    const bar = el("div", "bar");
    bar.style.width = `${high > low ? 8 + 92 * (r.score - low) / (high - low) : 100}%`;
    const what = describe(item);
    what.querySelector(".id").before(score);
    card.append(el("span", "rank", String(n + 1)), thumb(item), what, bar);
    return card;
  }));
}

// ------------------------------------------------------------------ new items

async function addItem(event) {
  event.preventDefault();
  const id = $("new-id").value.trim();
  const text = $("new-text").value.trim();
  try {
    await api("items", {items: [{id, text}]});
    state.added.add(id);
    remember([{id, title: text.split(/[.;\n]/)[0].slice(0, 120) || id, text, has_image: false}]);
    state.lastAdded = id;
    $("new-id").value = "";
    $("new-text").value = "";
    await refresh();
    search();
    showModel();
  } catch (err) {
    showError(err);
  }
}

async function showRank(id) {
  const res = await api("rank", {history: state.history.map((item) => item.id), items: [id],
                                 exclude_seen: $("exclude-seen").checked});
  const [r] = res.ranks;
  const note = $("new-rank");
  note.replaceChildren();
  if (r.rank === null) {
    note.append(`${id} is in the history.`);
  } else {
    note.append(`${id} ranks `, el("strong", "", `${r.rank}`), ` of ${res.of} after the history (score ${r.score.toFixed(3)}).`);
  }
}

// ------------------------------------------------------------------ start

async function showModel() {
  const health = await api("health");
  const dataset = String(health.dataset || "").split("/").filter(Boolean).pop() || "?";
  $("model").textContent = `model ${health.model}, trained on ${dataset} · ${health.n_items.toLocaleString()} items`;
  return health;
}

async function start() {
  try {
    const health = await showModel();
    if (!health.supports_new_items) {
      $("new-item-form").hidden = true;
      $("new-item-note").textContent = `${health.model} scores items by the ID embeddings it learned in training, ` +
        "so it cannot score items it was not trained on; a content model (mp4sr) can.";
    }
  } catch (err) {
    showError(err);
  }
  let timer = null;
  $("search").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, 150); });
  $("search").addEventListener("keydown", async (event) => {
    if (event.key !== "Enter") return;
    clearTimeout(timer);
    await search();  // the results of what was typed, not of the words before
    $("results").firstElementChild?.click();
  });
  $("clear").addEventListener("click", () => { state.history = []; renderHistory(); refresh(); });
  $("k").addEventListener("change", refresh);
  $("exclude-seen").addEventListener("change", refresh);
  $("new-item-form").addEventListener("submit", addItem);
  renderHistory();
  search();
  refresh();
}

start();
