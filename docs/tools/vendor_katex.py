"""Copy KaTeX (MIT licence) from the npm registry into docs/assets/katex/, so maths renders offline.

The built site typesets ``\\(...\\)`` and ``\\[...\\]`` (written by pymdownx.arithmatex) with KaTeX's
auto-render, loaded from the site itself: nothing is fetched from a CDN when a page is viewed. The files
are committed (about 600 kB: the minified script and stylesheet, auto-render, the woff2 fonts and the
licence); run this only to change the version::

    python docs/tools/vendor_katex.py [VERSION]      # needs npm
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

VERSION = "0.16.22"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEST = os.path.join(ROOT, "docs", "assets", "katex")
FILES = ["LICENSE", "dist/katex.min.js", "dist/katex.min.css", "dist/contrib/auto-render.min.js"]


def main(version: str = VERSION) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", f"katex@{version}", "--silent"], cwd=tmp, check=True)
        (tgz,) = glob.glob(os.path.join(tmp, "katex-*.tgz"))
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        pkg = os.path.join(tmp, "package")
        shutil.rmtree(DEST, ignore_errors=True)
        for rel in FILES + [os.path.relpath(p, pkg) for p in glob.glob(os.path.join(pkg, "dist", "fonts", "*.woff2"))]:
            out = os.path.join(DEST, rel[len("dist/"):] if rel.startswith("dist/") else rel)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            shutil.copyfile(os.path.join(pkg, rel), out)
    print(f"KaTeX {version} copied into {os.path.relpath(DEST, ROOT)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
