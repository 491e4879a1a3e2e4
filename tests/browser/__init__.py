"""Browser tests: Clarion's web pages in a real headless Chromium, driven by Playwright."""
