"""Screenshots of lora_core inside a running AUTOMATIC1111 or Forge: the txt2img page with the
"Lora" cards page open, and lora_core's own "LoRA" tab. Headless Debian chromium via Playwright.

    python tools/host_screenshot.py URL OUT_PREFIX      # writes OUT_PREFIX_cards.png, OUT_PREFIX_tab.png

Prints one JSON line: files written and JavaScript exceptions seen (there should be none).
"""
from __future__ import annotations

import json
import sys

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def main(url: str, prefix: str) -> int:
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    written: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, timeout=180_000)
        page.wait_for_selector("#txt2img_extra_tabs", timeout=180_000)
        page.locator("#txt2img_extra_tabs button", has_text="Lora").first.click()
        page.wait_for_selector("#txt2img_lora_cards_html .card", timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=f"{prefix}_cards.png")
        written.append(f"{prefix}_cards.png")
        # The top tab bar may hide our button in its overflow: click it from the page's script.
        page.evaluate("""() => {
            // the first button named exactly "LoRA" is the top-level tab (the settings page has
            // a "LoRA (lora_core)" section button further down)
            const ours = [...document.querySelectorAll('#tabs button')].find(b => b.textContent.trim() === 'LoRA');
            ours.click();
        }""")
        page.wait_for_selector("#lora_core_tab, #tab_lora_core_tab", timeout=60_000)
        page.wait_for_timeout(2500)
        page.screenshot(path=f"{prefix}_tab.png")
        written.append(f"{prefix}_tab.png")
        browser.close()
    print(json.dumps({"saved": written, "page_errors": errors}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
