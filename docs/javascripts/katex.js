// Typeset the maths that pymdownx.arithmatex (generic mode) wraps in <span|div class="arithmatex">
// with the KaTeX bundled under assets/katex/ (nothing is fetched from elsewhere). Material calls this
// on every page load, including instant navigation.
document$.subscribe(({ body }) => {
  for (const el of body.querySelectorAll(".arithmatex")) {
    renderMathInElement(el, {
      delimiters: [
        { left: "\\(", right: "\\)", display: false },
        { left: "\\[", right: "\\]", display: true },
      ],
      throwOnError: false,  // an unsupported command shows in red with its source, the rest still renders
    });
  }
});
