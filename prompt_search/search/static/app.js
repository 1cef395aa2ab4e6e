// The search page: queries /api/search as the user types (debounced), by a dropped or pasted image, or by a
// result ("more like this"), within the filters' bounds (filters.js); a page of results at a time, the next one
// fetched as the end of the results nears. Result cards come from the server already escaped (gallery.card);
// everything the page's scripts write goes in as text, never as markup. A module: strict, and run once the page is
// parsed.
import {openDetail, setUpDetail} from "./detail.js";
import {chosenFilters, offerFilters, setUpFilters} from "./filters.js";
import {offerExport, setUpExport} from "./export.js";
import {setUpKeys} from "./keys.js";

const DEBOUNCE_MS = 250;
const WATCH_POLL_MS = 2000;  // how often the page asks a watching server (serve.py --WATCH) whether images arrived
const PAGE_SIZE = 40;  // results a request asks for: the first page, and each next one
// How deep the server pages: a sorted or grouped query's results are among the first SORT_DEPTH by relevance
// (hybrid.SORT_DEPTH), any other's among the first MAX_RESULT_DEPTH (answers.py); it refuses a page beyond
const SORT_DEPTH = 400;
const MAX_RESULT_DEPTH = 1000;
const $ = (id) => document.getElementById(id);
let image = null;  // the query image, base64
let like = null;  // {index, position} of the result to search like
let timer = 0;
let inflight = null;  // the AbortController of the request in flight: a newer query cancels it
let generation = null;  // a watching server's count of changes taken in, as last seen
let shown = null;  // that count when the results shown were searched
let columns = {};  // the columns each index can filter and sort on (/health's filters)
let results = [];  // the results shown, as /api/search gives them, in the cards' order
let asked = null;  // the request of the results shown, but its offset: a next page asks the same
let promptGroup = null;  // the prompt whose images are shown ("All N images" of one result per prompt), as text

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
  if (inflight) inflight.abort();
  if (!text.trim() && !image && !like) {
    show([], "");
    offerMore(false);
    status("");
    return;
  }
  let filters;
  try {
    filters = chosenFilters();
  } catch (error) {
    status(error.message, true);
    return;
  }
  shown = generation;
  $("fresh").hidden = true;
  const body = {text, index: side(), cards: true};
  // a text is ranked in the chosen mode; an image or a result has no words, so with one "words only" is "both"
  if (text.trim()) body.mode = (image || like) && mode() === "keyword" ? "hybrid" : mode();
  if (image) body.image = image;
  if (like) body.like = like;
  body.sort = $("sort").value;
  if ($("group").checked) body.group = "prompt";
  if (promptGroup !== null) filters.prompt_group = {min: promptGroup, max: promptGroup};  // exact: decimal text
  if (Object.keys(filters).length) body.filters = filters;
  await fetchPage(body, 0);
}

// The page of body's results from offset: the first (offset 0) replaces the results shown, a next one is appended.
// A new query has cancelled the request in flight (search); a next page waits for none (loadMore).
async function fetchPage(body, offset) {
  const controller = inflight = new AbortController();
  const depth = body.sort !== "relevance" || body.group === "prompt" ? SORT_DEPTH : MAX_RESULT_DEPTH;
  const count = Math.min(PAGE_SIZE, depth - offset);
  try {
    const response = await fetch("/api/search", {
      method: "POST", headers: {"Content-Type": "application/json"},
      body: JSON.stringify({...body, offset, num_results: count}), signal: controller.signal});
    const answer = await response.json();
    if (!response.ok) {
      status(answer.error || response.statusText, true);
      offerMore(false);
      return;
    }
    asked = body;
    show(offset ? [...results, ...answer.results] : answer.results, answer.cards, offset > 0);
    // a short page was the last; and none is asked for past the depth the server pages to
    offerMore(answer.results.length === count && offset + count < depth);
    const timings = Object.entries(answer.timings_ms).map(([name, ms]) => `${name} ${ms.toFixed(1)} ms`).join(", ");
    const notes = answer.notes.length ? ` (${answer.notes.join("; ")})` : "";
    status(`${results.length} results (${answer.mode}): ${timings}${notes}`, false);
  } catch (error) {
    if (error.name !== "AbortError") {
      status(`search failed: ${error.message}`, true);
      offerMore(false);
    }
  } finally {
    if (inflight === controller) inflight = null;
  }
}

// The results all, their new cards (markup escaped by the server) appended or in place of those shown.
function show(all, cards, append = false) {
  const template = document.createElement("template");
  template.innerHTML = cards;  // the CSP runs no inline script anyway
  for (const card of template.content.children) card.tabIndex = 0;  // reached by Tab and the arrow keys (keys.js)
  if (append) $("results").append(template.content);
  else $("results").replaceChildren(template.content);
  results = all;
  offerExport(results.length);
}

function loadMore() {
  if (!inflight && !$("more").hidden) fetchPage(asked, results.length);
}

// Infinite scroll: the next page is fetched as the "Load more" button comes near the viewport. An observer reports
// changes only, so it observes the button anew after each page: a button still in view then asks for another.
const nearEnd = new IntersectionObserver((entries) => {
  if (entries.some((entry) => entry.isIntersecting)) loadMore();
}, {rootMargin: "300px"});

function offerMore(more) {
  $("more").hidden = !more;
  nearEnd.unobserve($("more"));
  if (more) nearEnd.observe($("more"));
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
  offerFilters(columns[side()] || []);
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

function searchLike(result) {
  like = {index: result.index, position: result.position};
  image = null;
  $("query-image").hidden = true;
  $("text").value = "";
  search();
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

$("text").addEventListener("input", () => { like = null; leavePrompt(); later(); });
$("search").addEventListener("submit", (event) => { event.preventDefault(); search(); });
$("index").addEventListener("change", () => {
  leavePrompt();  // the prompts index has no prompt groups
  offerOrderings();
  offerFilters(columns[side()] || []);
  search();
});
$("sort").addEventListener("change", search);
$("group").addEventListener("change", () => { leavePrompt(); search(); });
$("mode").addEventListener("change", search);
$("refresh").addEventListener("click", search);
$("more").addEventListener("click", loadMore);
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
  const card = event.target.closest(".card");
  if (card && event.target.closest("img, .no-image")) openDetail([...$("results").children].indexOf(card));
  const button = event.target.closest("button");
  if (!button) return;
  if (button.classList.contains("copy")) {
    const prompt = card.querySelector(".prompt").textContent;
    try {
      await navigator.clipboard.writeText(prompt);
      status("prompt copied", false);
    } catch (error) {
      status(`could not copy: ${error.message}`, true);
    }
  } else if (button.classList.contains("more")) {
    searchLike({index: button.dataset.index, position: Number(button.dataset.position)});
  } else if (button.classList.contains("prompt-images")) {
    showPromptImages(button.dataset.group);
  }
});

// The images of one prompt (a result of "One per prompt"): the same query, within them.
function showPromptImages(group) {
  promptGroup = group;
  $("one-prompt").hidden = false;
  $("group").checked = false;
  search();
}

// Back from one prompt's images: a new text, another index, or the grouping changed.
function leavePrompt() {
  promptGroup = null;
  $("one-prompt").hidden = true;
}
$("all-prompts").addEventListener("click", () => {
  leavePrompt();
  $("group").checked = true;
  search();
});
setUpFilters(later);
setUpDetail(() => results, searchLike);
setUpKeys();
setUpExport(() => asked && {body: asked, count: results.length}, status);
offerBuiltIndices();
