"""A real browser's EventSource resumes a stream by itself when its connection is cut.

Headless Chromium (Debian's `chromium` package, which `.ci/run` installs), driven by Playwright for Python, runs
a page with an `EventSource` on `GET /chat/stream`. The page is served at the proxy's own origin by Playwright's
router (same origin, so no CORS and none of the proxy's CSP on the test page). Between the browser and
tokenrelay sits a TCP relay that the test cuts mid-stream, as a restarting load balancer would: EventSource
reconnects after the stream's `retry:` with `Last-Event-ID`, and the page's assembled text must equal the whole
answer, with no token repeated and one upstream request in all.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from bench.fake_upstream import FakeUpstream
from tests.support.processes import served
from tests.support.resume import resume_config, upstream_text
from tests.support.tcp_relay import SeveringRelay

pytestmark = pytest.mark.anyio

# As the machine's probe starts it: without the background-networking flags Chromium reaches for Google's hosts,
# which a closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

PAGE = """<!doctype html><meta charset="utf-8"><title>resume</title><script>
window.text = ""; window.ids = []; window.opens = 0; window.ended = "";
const source = new EventSource("/chat/stream?model=story&prompt=tell%20me");
source.onopen = () => { window.opens += 1; };
source.addEventListener("token", (e) => { window.text += JSON.parse(e.data).text; window.ids.push(e.lastEventId); });
for (const kind of ["done", "error", "cancel"]) {
  source.addEventListener(kind, (e) => { if (e.data) { window.ended = kind; source.close(); } });
}
</script>"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the browser tests need Debian's chromium package (apt-get install chromium; .ci/run does)"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


async def test_event_source_resumes_by_itself_after_the_connection_is_cut(
    tmp_path: Path, upstream: FakeUpstream, browser: Browser
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url, n=80, gap_ms=25, retry_ms=300, auth=False)
    with served(path) as proxy:
        relay = await SeveringRelay(proxy.port).start()
        try:
            origin = f"http://127.0.0.1:{relay.port}"
            page = await browser.new_page()
            await page.route(f"{origin}/page", lambda route: route.fulfill(body=PAGE, content_type="text/html"))
            await page.goto(f"{origin}/page")
            await page.wait_for_function("window.ids.length >= 10", timeout=10_000)
            relay.cut()
            await page.wait_for_function("window.ended !== ''", timeout=15_000)
            text, ids, opens, ended = await page.evaluate("[window.text, window.ids, window.opens, window.ended]")
        finally:
            await relay.aclose()
    assert ended == "done"
    assert opens >= 2  # it did reconnect
    assert text == upstream_text(80)
    seqs = [int(i.rsplit(".", 1)[1]) for i in ids]
    assert seqs == sorted(set(seqs))  # no token twice, none out of order
    assert len(upstream.records_for(model)) == 1
