"""Open a page in headless Chromium and say what a reader would stumble on: images that
do not load, and content wider than the window (a sideways scroll bar).

The page is copied beside itself with a script that, once everything has loaded, writes
its findings into the DOM; `chromium --dump-dom` prints that DOM."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

INSTALL = "apt-get install -y --no-install-recommends chromium"
CHECK = """<script>
window.addEventListener("load", () => {
  const width = window.innerWidth;
  const found = {
    images: document.images.length,
    broken: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt),
    scroll_width: document.documentElement.scrollWidth,
    inner_width: width,
    too_wide: [...document.body.querySelectorAll("*")]
      .filter(e => e.getBoundingClientRect().left + e.scrollWidth > width + 0.5)
      .map(e => `<${e.tagName.toLowerCase()}> ${e.textContent.slice(0, 60)}`),
    text: document.body.innerText,
  };
  const out = document.createElement("pre");
  out.id = "render-check";
  out.textContent = JSON.stringify(found);
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    raise AssertionError(
        f"chromium is not installed, so the report cannot be checked in a browser; install "
        f"it with `{INSTALL}` (as root; .ci/run does this)."
    )


def render(page: Path, width: int = 1280, height: int = 900) -> dict:
    """What Chromium finds on `page` at a `width`-pixel window: image count, the alt
    text of images that failed, scroll and window widths, the elements too wide, and the
    text as rendered (innerText: what is shown, table cells apart by tabs)."""
    with tempfile.TemporaryDirectory() as scratch:
        checked = page.with_name(f".render-check-{page.name}")
        checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
        try:
            result = subprocess.run(
                [
                    chromium(),
                    "--headless",
                    "--no-sandbox",  # CI runs as root, where the sandbox refuses to start
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    f"--user-data-dir={scratch}",
                    f"--window-size={width},{height}",
                    "--virtual-time-budget=10000",  # let every image decode before the dump
                    "--dump-dom",
                    checked.resolve().as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
        finally:
            checked.unlink()
    found = re.search(r'<pre id="render-check">(.*?)</pre>', result.stdout, re.S)
    assert found, f"chromium printed no check (exit {result.returncode}): {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))
