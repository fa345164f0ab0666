// The widget manager (html-manager 1.0.6) typesets labels through MathJax 2's
// MathJax.Hub.Queue; the site runs MathJax 3. Give it a MathJax-3-backed Hub.
window.addEventListener("load", function () {
  if (window.MathJax && !window.MathJax.Hub) {
    window.MathJax.Hub = {
      Queue: function () {
        if (window.MathJax.typesetPromise) { window.MathJax.typesetPromise(); }
      },
    };
  }
});
