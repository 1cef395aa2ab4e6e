// The detail view: one result's whole prompt, negative prompt and every setting it has, its picture larger, buttons
// that copy its prompt, seed and settings, and "more like this"; stepDetail moves to the previous or next result.
// Prompts and settings are anyone's text: everything here goes in as text, never as markup.

const $ = (id) => document.getElementById(id);
const dialog = $("detail");
const FOUND_BY = {clip: "CLIP", keywords: "words"};  // a ranking as the cards name it (gallery.FOUND_BY)
let resultsOf = () => [];  // the results shown, in the cards' order
let searchLike = () => {};
let at = -1;  // which of them is shown

// results: returns the results shown; moreLike(result): searches like that result.
export function setUpDetail(results, moreLike) {
  resultsOf = results;
  searchLike = moreLike;
  $("detail-previous").addEventListener("click", () => stepDetail(-1));
  $("detail-next").addEventListener("click", () => stepDetail(1));
  $("detail-close").addEventListener("click", () => dialog.close());
  $("detail-more").addEventListener("click", () => {
    dialog.close();
    searchLike(resultsOf()[at]);
  });
  for (const button of dialog.querySelectorAll(".detail-copy")) {
    button.addEventListener("click", () => copy(button));
  }
  dialog.addEventListener("click", (event) => {
    if (event.target === dialog) dialog.close();  // a click on the backdrop: the body fills the dialog's box
  });
  // Back to the card of the result last shown, so that the arrow keys go on from there (keys.js).
  dialog.addEventListener("close", () => document.getElementById("results").children[at]?.focus());
}

export function openDetail(index) {
  at = index;
  show(resultsOf()[at]);
  if (!dialog.open) dialog.showModal();
}

export function detailIsOpen() {
  return dialog.open;
}

// The previous (-1) or next (1) result, if there is one.
export function stepDetail(delta) {
  const next = at + delta;
  if (next >= 0 && next < resultsOf().length) openDetail(next);
}

function show(result) {
  $("detail-title").textContent = `#${result.rank}`;
  $("detail-prompt").textContent = result.prompt;
  $("detail-negative").textContent = result.negative_prompt || "";
  $("detail-negative-section").hidden = !result.negative_prompt;
  picture(result);
  $("detail-settings").replaceChildren(...settings(result).flatMap(([name, value]) => {
    const term = document.createElement("dt");
    const description = document.createElement("dd");
    term.textContent = name;
    description.textContent = value;
    return [term, description];
  }));
  const copies = {prompt: result.prompt, seed: result.seed, settings: a1111Settings(result)};
  for (const button of dialog.querySelectorAll(".detail-copy")) {
    button.dataset.copy = copies[button.dataset.what] || "";  // what a click copies
    button.hidden = !button.dataset.copy;
  }
  $("detail-previous").disabled = at === 0;
  $("detail-next").disabled = at === resultsOf().length - 1;
  $("detail-note").textContent = "";
}

// The image's own http(s) link when it has one (open-prompts' rows: larger than a thumbnail), falling back on the
// server's thumbnail when that link is dead; a folder's image only has the thumbnail (its url is the thumbnail's).
function picture(result) {
  const image = $("detail-image");
  // a folder's image: its url is this server's thumbnail of it, made absolute
  const thumbnailUrl = result.thumbnail.startsWith("/") && result.url.endsWith(result.thumbnail);
  const own = /^https?:\/\//i.test(result.url) && !thumbnailUrl ? result.url : "";
  const src = own || result.thumbnail;
  image.onerror = own ? () => { image.onerror = null; image.src = result.thumbnail; } : null;
  if (src) image.src = src;
  image.alt = `result ${result.rank}`;
  image.hidden = !src;
  $("detail-no-image").hidden = !image.hidden;
  $("detail-link").href = own || "#";
  $("detail-link").hidden = !own;
}

function settings(result) {
  const found = Object.entries(result.found_by).map(([name, score]) => `${FOUND_BY[name] || name} ${score}`);
  return [["Size", result.width && result.height ? `${result.width}×${result.height}` : null], ["Seed", result.seed],
          ["Steps", result.steps], ["CFG scale", result.cfg_scale], ["Sampler", result.sampler], ["Model", result.model],
          ["Model hash", result.model_hash], ["Tool", result.tool], ["Date", result.date],
          ["Follows its prompt", result.adherence], ["Aesthetic", result.aesthetic], ["Score", result.score],
          ["Found by", found.join(", ")], ["File", result.id]]
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .map(([name, value]) => [name, String(value)]);
}

// The settings line A1111 writes under a prompt ("Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 512x768,
// Model hash: …, Model: …"), of what the result has; a value with a comma, colon or line break JSON-quoted, as A1111
// quotes it, so that its "read generation parameters" reads it back.
function a1111Settings(result) {
  const size = result.width && result.height ? `${result.width}x${result.height}` : null;
  return [["Steps", result.steps], ["Sampler", result.sampler], ["CFG scale", result.cfg_scale], ["Seed", result.seed],
          ["Size", size], ["Model hash", result.model_hash], ["Model", result.model]]
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .map(([name, value]) => `${name}: ${/[,:\n]/.test(String(value)) ? JSON.stringify(String(value)) : value}`)
    .join(", ");
}

async function copy(button) {
  try {
    await navigator.clipboard.writeText(button.dataset.copy);
    $("detail-note").textContent = `${button.dataset.what} copied`;
  } catch (error) {
    $("detail-note").textContent = `could not copy: ${error.message}`;
  }
}
