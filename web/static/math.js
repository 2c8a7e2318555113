// Renders the LaTeX answers of a page (elements with data-tex) as MathML with the vendored KaTeX.
// MathML output sets no inline styles, so the Content-Security-Policy stays strict; trust is off
// (no \href or \url), and an answer KaTeX cannot parse keeps its source text. htmx swaps re-render.
(function () {
  "use strict";
  function render(root) {
    if (!window.katex || !root.querySelectorAll) return;
    root.querySelectorAll("[data-tex]:not([data-rendered])").forEach(function (el) {
      try {
        window.katex.render(el.getAttribute("data-tex"), el, {
          output: "mathml", throwOnError: true, trust: false, maxSize: 20, maxExpand: 200,
        });
        el.setAttribute("data-rendered", "mathml");
      } catch (e) {
        el.setAttribute("data-rendered", "source");
      }
    });
  }
  document.addEventListener("DOMContentLoaded", function () { render(document); });
  document.addEventListener("htmx:afterSwap", function (event) { render(event.target); });
})();
