"""Screenshot a demo folder's ``index.html`` with headless Chromium, to look at the page.

    python benchmarks/report_screenshot.py runs/demo [--out page.png] [--height 4000]

Uses Debian's ``chromium`` (``apt-get install -y chromium``); exits 2 with one line when it
is absent. The browser runs with a fresh empty profile and every network feature off: the
page is local files only.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM = ("/usr/bin/chromium", "chromium", "chromium-browser")


def find_chromium() -> str | None:
    """The first Chromium on this machine, or None."""
    for name in CHROMIUM:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 4000,
               timeout_s: float = 120) -> Path:
    """Render ``page`` (an HTML file) into the PNG ``out`` at ``width`` x ``height``."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium not found (apt-get install -y chromium)")
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="stormvl-chromium-") as profile:
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking", "--disable-component-update",
               "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={out}",
               f"--window-size={width},{height}", "--hide-scrollbars",
               Path(page).resolve().as_uri()]
        subprocess.run(cmd, check=True, timeout=timeout_s, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a demo folder with index.html")
    ap.add_argument("--out", type=Path, default=None, help="PNG (default: FOLDER/page.png)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4000)
    args = ap.parse_args(argv)
    page = args.folder / "index.html"
    if not page.is_file():
        print(f"error: {page}: not found (run `stormvl report {args.folder}`)", file=sys.stderr)
        return 2
    try:
        out = screenshot(page, args.out or args.folder / "page.png", args.width, args.height)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
