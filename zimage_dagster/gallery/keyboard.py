"""The gallery's only script: keyboard shortcuts, served as ``/-/review.js``.

It clicks what the page already offers (links and form buttons), so every page works the same
without it. The Content-Security-Policy allows scripts from the gallery itself only
(``script-src 'self'``): no inline script, nothing third-party.

=================  =====================================
key                does
=================  =====================================
``→`` or ``j``     next partition (or next grid page)
``←`` or ``k``     previous partition (or previous page)
``1`` .. ``8``     pick that candidate
``x``              reject the partition (with the note typed, if any)
``u``              undo your last verdict on it
=================  =====================================

>>> "addEventListener" in SCRIPT and "<" not in SCRIPT
True
"""

from __future__ import annotations

__all__ = ["KEYS", "SCRIPT"]

#: ``(keys, what they do)``, as the pages show it.
KEYS: tuple[tuple[str, str], ...] = (
    ("→ / j", "next"),
    ("← / k", "previous"),
    ("1-8", "pick"),
    ("x", "reject"),
    ("u", "undo"),
)

SCRIPT = """\
(function () {
  "use strict";
  function press(selector) {
    var target = document.querySelector(selector);
    if (!target) { return false; }
    target.click();
    return true;
  }
  document.addEventListener("keydown", function (event) {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) { return; }
    var on = event.target;
    if (on && (on.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(on.tagName))) { return; }
    var key = event.key;
    var done = false;
    if (key === "ArrowRight" || key === "j") { done = press("a[rel=next]"); }
    else if (key === "ArrowLeft" || key === "k") { done = press("a[rel=prev]"); }
    else if (/^[1-8]$/.test(key)) { done = press("button[data-key='" + key + "']"); }
    else if (key === "x" || key === "u") { done = press("button[data-key=" + key + "]"); }
    if (done) { event.preventDefault(); }
  });
})();
"""
