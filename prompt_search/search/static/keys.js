// The page's keys: "/" goes to the search box; on a focused result card the arrow keys move to the card beside it
// (Up and Down by the grid's rows) and Enter opens its detail view; in the detail view Left and Right step through
// the results (Esc, which closes it, is the dialog's own).
import {detailIsOpen, openDetail, stepDetail} from "./detail.js";

const TYPING = "input, textarea, select, [contenteditable]";  // where "/" and the arrows are the field's own keys
const STEPS = {ArrowLeft: -1, ArrowRight: 1};

export function setUpKeys() {
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.defaultPrevented) return;
    if (detailIsOpen()) {
      if (event.key in STEPS) {
        event.preventDefault();
        stepDetail(STEPS[event.key]);
      }
      return;
    }
    if (event.key === "/" && !event.target.closest(TYPING)) {
      event.preventDefault();  // the "/" is a key here, not the query's first character
      document.getElementById("text").focus();
      return;
    }
    const cards = [...document.getElementById("results").children];
    const at = cards.indexOf(event.target);  // the card itself: its buttons keep their own keys
    if (at < 0) return;
    if (event.key === "Enter") {
      event.preventDefault();
      openDetail(at);
      return;
    }
    const columns = getComputedStyle(document.getElementById("results")).gridTemplateColumns.split(" ").length;
    const step = {...STEPS, ArrowUp: -columns, ArrowDown: columns}[event.key];
    if (!step) return;
    event.preventDefault();  // no scrolling by the arrows: moving the focus scrolls the card into view
    let target = at + step;
    if (target >= cards.length && Math.floor(at / columns) < Math.floor((cards.length - 1) / columns)) {
      target = cards.length - 1;  // down to a last row too short to have a card below this one: its last
    }
    cards[target]?.focus();
  });
}
