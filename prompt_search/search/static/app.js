// The search page: queries /api/search as the user types (debounced), by a dropped or pasted image, or by a
// result ("more like this"). Result cards come from the server already escaped (gallery.card); everything this
// script itself writes goes in as text, never as markup.
"use strict";

const DEBOUNCE_MS = 250;
const WATCH_POLL_MS = 2000;  // how often the page asks a watching server (serve.py --WATCH) whether images arrived
const NUM_RESULTS = 40;
const $ = (id) => document.getElementById(id);
let image = null;  // the query image, base64
let like = null;  // {index, position} of the result to search like
let timer = 0;
let inflight = null;  // the AbortController of the request in flight: a newer query cancels it
let generation = null;  // a watching server's count of changes taken in, as last seen
let shown = null;  // that count when the results shown were searched
let columns = {};  // the columns each index can filter and sort on (/health's filters)

function side() {
  return document.querySelector("input[name=index]:checked").value;
}

function mode() {
  return document.querySelector("input[name=mode]:checked").value;
}

function status(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function search() {
  const text = $("text").value;
  if (!text.trim() && !image && !like) {
    $("results").replaceChildren();
    status("");
    return;
  }
  if (inflight) inflight.abort();
  inflight = new AbortController();
  shown = generation;
  $("fresh").hidden = true;
  const body = {text, index: side(), num_results: NUM_RESULTS, cards: true};
  // a text is ranked in the chosen mode; an image or a result has no words, so with one "words only" is "both"
  if (text.trim()) body.mode = (image || like) && mode() === "keyword" ? "hybrid" : mode();
  if (image) body.image = image;
  if (like) body.like = like;
  body.sort = $("sort").value;
  if ($("group").checked) body.group = "prompt";
  try {
    const response = await fetch("/api/search", {method: "POST", headers: {"Content-Type": "application/json"},
                                                 body: JSON.stringify(body), signal: inflight.signal});
    const answer = await response.json();
    if (!response.ok) {
      status(answer.error || response.statusText, true);
      return;
    }
    $("results").innerHTML = answer.cards;  // escaped by the server; the CSP runs no inline script anyway
    const timings = Object.entries(answer.timings_ms).map(([name, ms]) => `${name} ${ms.toFixed(1)} ms`).join(", ");
    const notes = answer.notes.length ? ` (${answer.notes.join("; ")})` : "";
    status(`${answer.results.length} results (${answer.mode}): ${timings}${notes}`, false);
  } catch (error) {
    if (error.name !== "AbortError") status(`search failed: ${error.message}`, true);
  }
}

// Open on an index that exists: after `make run` on data whose image links are dead, only the prompts index does.
async function offerBuiltIndices() {
  let health;
  try {
    health = await (await fetch("/health")).json();
  } catch (error) {
    return;  // the choices stay as they are; a query says what is missing
  }
  const indices = health.indices || {};
  columns = health.filters || {};
  offerOrderings();
  if (health.watch) {
    generation = shown = health.watch.generation;
    setInterval(checkFresh, WATCH_POLL_MS);
  }
  for (const input of document.querySelectorAll("input[name=index]")) {
    input.disabled = !(input.value in indices);
    input.parentElement.title = input.disabled ? `no ${input.value} index here` : "";
  }
  const open = document.querySelector("input[name=index]:not(:disabled)");
  if (document.querySelector("input[name=index]:checked").disabled && open) {
    open.checked = true;
    search();
  }
}

// A watching server took in new, changed or deleted images since the results shown were searched: say so.
async function checkFresh() {
  try {
    generation = (await (await fetch("/health")).json()).watch.generation;
  } catch (error) {
    return;  // asked again at the next poll
  }
  $("fresh").hidden = generation === shown || !$("results").children.length;
}

// Sort only by a column the index has, and group only where it knows each image's prompt (step 4's scores).
function offerOrderings() {
  const have = columns[side()] || [];
  for (const option of $("sort").options) {
    option.disabled = option.value !== "relevance" && !have.includes(option.value);
  }
  if ($("sort").selectedOptions[0].disabled) $("sort").value = "relevance";
  $("group").disabled = !have.includes("prompt_group");
  if ($("group").disabled) $("group").checked = false;
}

function later() {
  clearTimeout(timer);
  timer = setTimeout(search, DEBOUNCE_MS);
}

function useImage(file) {
  if (!file || !file.type.startsWith("image/")) {
    status("that is not an image", true);
    return;
  }
  const reader = new FileReader();
  reader.onload = () => {
    image = String(reader.result).split(",", 2)[1];
    like = null;
    $("query-preview").src = URL.createObjectURL(file);
    $("query-image").hidden = false;
    search();
  };
  reader.readAsDataURL(file);
}

$("text").addEventListener("input", () => { like = null; later(); });
$("search").addEventListener("submit", (event) => { event.preventDefault(); search(); });
$("index").addEventListener("change", () => { offerOrderings(); search(); });
$("sort").addEventListener("change", search);
$("group").addEventListener("change", search);
$("mode").addEventListener("change", search);
$("refresh").addEventListener("click", search);
$("file").addEventListener("change", () => useImage($("file").files[0]));
$("clear-image").addEventListener("click", () => {
  image = null;
  $("query-image").hidden = true;
  search();
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
document.addEventListener("dragover", (event) => event.preventDefault());
document.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  useImage(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...event.clipboardData.items].find((entry) => entry.type.startsWith("image/"));
  if (item) useImage(item.getAsFile());
});
$("results").addEventListener("click", async (event) => {
  const button = event.target.closest("button");
  if (!button) return;
  const card = button.closest(".card");
  if (button.classList.contains("copy")) {
    const prompt = card.querySelector(".prompt").textContent;
    try {
      await navigator.clipboard.writeText(prompt);
      status("prompt copied", false);
    } catch (error) {
      status(`could not copy: ${error.message}`, true);
    }
  } else if (button.classList.contains("more")) {
    like = {index: button.dataset.index, position: Number(button.dataset.position)};
    image = null;
    $("query-image").hidden = true;
    $("text").value = "";
    search();
  }
});
offerBuiltIndices();
