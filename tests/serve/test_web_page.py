"""The search page in a real browser: headless Chromium (Debian's) driven by Playwright.

Skipped where Chromium or Playwright is missing, except in CI (CI=true), where `.ci/run` installs both.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from deepsem.index import Document, Index
from deepsem.serve import create_app

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MISSING = not os.path.exists(CHROMIUM)
try:
    from playwright.sync_api import sync_playwright
except ImportError:  # pragma: no cover
    MISSING = True

pytestmark = pytest.mark.skipif(MISSING and os.environ.get("CI") != "true",
                                reason="needs Debian's chromium and the playwright package")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    texts = ["银行卡账户余额", "还款利息逾期", "火车站车票", "医院医生看病", "手机电话号码", "Where is the station?"]
    index = Index.build(trained_model_dir, [Document(f"d{i}", t) for i, t in enumerate(texts)],
                        tmp_path_factory.mktemp("web") / "idx")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(create_app(index), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    yield index, f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_typing_a_query_shows_the_libraries_results(server):
    index, url = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)  # fresh profile
        page = browser.new_page(viewport={"width": 390, "height": 800})  # a phone-sized screen
        page.goto(url + "/")
        page.fill("#q", "火车票")
        page.press("#q", "Enter")
        page.wait_for_selector("#results li")
        texts = page.locator("#results li .text").all_inner_texts()
        scores = [float(s) for s in page.locator("#results li .score").all_inner_texts()]
        meta = page.inner_text("#meta")
        expected = index.search("火车票", k=10)[0]
        assert texts == [h.text for h in expected]
        assert scores == [round(h.score, 3) for h in expected]
        assert "ms" in meta and f"{len(expected)} results" in meta
        # the page fits a phone screen: no horizontal scrolling
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        # an over-long query shows the server's message, not a blank page
        page.fill("#q", "长" * 1200)
        page.press("#q", "Enter")
        page.wait_for_selector("#meta.error")
        assert "the limit is 1000" in page.inner_text("#meta")
        browser.close()
