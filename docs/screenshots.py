"""The README's screenshots, taken in headless Chromium (Debian's) through Playwright (`pip install playwright`).

    python docs/screenshots.py tensorboard URL [TAB ...]  # docs/tensorboard_{scalars,images,hparams}.png (or the TABs)
    python docs/screenshots.py serve URL         # docs/serve_{classify,groups}.png
    python docs/screenshots.py serve URL PHOTO   # docs/serve_not_garment.png: PHOTO uploaded on the Classify tab
    python docs/screenshots.py dashboard URL     # docs/optuna_dashboard.png (URL: the study's page)
    python docs/screenshots.py mlflow URL        # docs/mlflow_ui.png (URL: an experiment's page)

URL is a running `tensorboard --logdir ...`, `python -m fmnist.serve ...`, `make dashboard` or `mlflow ui ...`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

DOCS = Path(__file__).resolve().parent
ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main() -> None:
    what, url = sys.argv[1], sys.argv[2].rstrip("/")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox", *ARGS])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        if what == "tensorboard":
            # the scalars tab on the per-epoch curves (a regex of tags)
            tabs = {"scalars": "&tagFilter=%5E(train%7Cval)%2F", "images": "", "hparams": ""}
            for tab, query in tabs.items():
                if sys.argv[3:] and tab not in sys.argv[3:]:
                    continue
                page.goto(f"{url}/?darkMode=false#{tab}{query}")
                page.wait_for_timeout(6000)
                page.screenshot(path=DOCS / f"tensorboard_{tab}.png")
        elif what == "mlflow":  # the chart view of an experiment's runs, on their val/ curves
            page.set_viewport_size({"width": 1400, "height": 640})
            page.goto(f"{url}?compareRunsMode=CHART")
            page.get_by_text("seed=").first.wait_for(timeout=60000)  # the runs are fetched after the page opens
            page.get_by_role("button", name="Close").click()  # the assistant's panel
            page.get_by_placeholder("Search metric charts").fill("val/")
            page.wait_for_timeout(4000)
            page.screenshot(path=DOCS / "mlflow_ui.png")
        elif what == "dashboard":
            page.goto(url)
            page.wait_for_timeout(8000)  # the history plot is drawn after the study is fetched
            page.screenshot(path=DOCS / "optuna_dashboard.png", full_page=True)
        elif sys.argv[3:]:  # a photo of the user's: uploaded, classified, shown with its verdict
            page.goto(url)
            page.get_by_text("nearest catalogue items").first.wait_for()
            page.wait_for_timeout(6000)
            page.get_by_role("button", name="Clear").first.click()  # the first example's file: the upload box returns
            page.locator("input[type=file]").first.set_input_files(sys.argv[3])
            page.wait_for_timeout(8000)
            page.screenshot(path=DOCS / "serve_not_garment.png", full_page=True)
        else:
            page.goto(url)
            page.get_by_text("nearest catalogue items").first.wait_for()
            page.wait_for_timeout(6000)  # the example is classified as the page opens
            page.screenshot(path=DOCS / "serve_classify.png", full_page=True)
            page.get_by_role("tab", name="Catalogue groups").click()
            page.wait_for_timeout(2000)
            for _ in range(20):  # down the page: the galleries load their images once in view
                page.mouse.wheel(0, 800)
                page.wait_for_timeout(200)
            page.wait_for_timeout(2000)
            page.screenshot(path=DOCS / "serve_groups.png", full_page=True)
        browser.close()


if __name__ == "__main__":
    main()
