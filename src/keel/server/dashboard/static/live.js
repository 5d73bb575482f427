// Keeps a page current while what it shows is still changing (a run that has not ended, a
// queue): <main data-live="SECONDS"> reloads every SECONDS, but never while the reader is
// typing in a form, has opened a section (<details>), or has selected text.
(function () {
  "use strict";
  var main = document.querySelector("main[data-live]");
  if (!main) { return; }
  var seconds = Math.max(2, parseInt(main.getAttribute("data-live"), 10) || 5);
  function busy() {
    var active = document.activeElement;
    if (active && /^(INPUT|TEXTAREA|SELECT)$/.test(active.tagName)) { return true; }
    if (document.querySelector("details[open]")) { return true; }
    var selection = window.getSelection && window.getSelection();
    return !!(selection && String(selection).length);
  }
  window.setInterval(function () {
    if (!document.hidden && !busy()) { window.location.reload(); }
  }, seconds * 1000);
}());
