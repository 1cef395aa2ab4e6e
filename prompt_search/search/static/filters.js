// The filters panel: a min and a max (from and to, for the date) for each column the chosen index can filter on
// (/health's filters), read into /api/search's filters. An empty input is no bound.

const panel = document.getElementById("filters");

// Show the inputs of the columns the index has (an index without one would refuse its filter), and the panel only
// when there is one. The others keep what was typed, for when their index is chosen again.
export function offerFilters(columns) {
  let any = false;
  for (const group of panel.querySelectorAll(".filter")) {
    group.hidden = !columns.includes(group.dataset.column);
    any ||= !group.hidden;
  }
  panel.hidden = !any;
  count();
}

// The bounds of the columns offered, as /api/search takes them. Seeds reach 2**64 - 1, past what a JS number holds
// exactly, so a seed's bound goes as the decimal text typed (the API reads it exactly, and answers 422 to text that
// is no number); dates as the inputs' YYYY-MM-DD. Throws when a number input holds what is no number.
export function chosenFilters() {
  const filters = {};
  for (const group of panel.querySelectorAll(".filter:not([hidden])")) {
    const bounds = {};
    for (const input of group.querySelectorAll("input")) {
      if (input.validity.badInput) throw new Error(`${input.getAttribute("aria-label")}: not a number`);
      const text = input.value.trim();
      if (text) bounds[input.dataset.end] = input.type === "number" ? Number(text) : text;
    }
    if (Object.keys(bounds).length) filters[group.dataset.column] = bounds;
  }
  return filters;
}

// Say on the closed panel how many of its columns are bounded, so that fewer results are never a mystery.
function count() {
  const bounded = [...panel.querySelectorAll(".filter:not([hidden])")]
    .filter((group) => [...group.querySelectorAll("input")].some((input) => input.value.trim() || input.validity.badInput));
  document.getElementById("filter-count").textContent = bounded.length ? `(${bounded.length} set)` : "";
}

// onChange runs on every edit (the caller debounces it) and once after "Clear filters".
export function setUpFilters(onChange) {
  panel.addEventListener("input", () => { count(); onChange(); });
  document.getElementById("clear-filters").addEventListener("click", () => {
    for (const input of panel.querySelectorAll("input")) input.value = "";
    count();
    onChange();
  });
}
