"""The console end to end in headless Chromium (Playwright, Debian's chromium): a real warnd, a real
Mosquitto and the speaker simulator (`warnctl simulate-speakers`).

An operator signs in, issues a red warning for two villages after looking at the preview and
playing its audio; the warning waits for sign-off and the operator cannot approve it; an approver
signs in and approves; the board's coverage reaches 100 % live, without a reload; the operator
cancels it; the approver's audit page shows a new draft live. A wrong token, a viewer trying to
issue and a form with missing fields each show a clear message in Chinese. Screenshots of every
page, in Chinese and English, are saved under tests/artifacts/console/ (git-ignored).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import TOKENS, warning_body
from tests.support.mqtt import Broker
from tests.support.process import ROOT, DaemonProcess
from tests.support.township import VILLAGES, township

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = ROOT / "tests" / "artifacts" / "console"
# Seconds a page may take to show what the test waits for (a preview's audio is rendered by
# espeak-ng and ffmpeg; a play confirmed by the simulator travels through the broker).
UI_TIMEOUT_MS = 30_000

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is installed by `make venv`")
if not Path(CHROMIUM).exists():
    pytest.skip("chromium is not installed (make deps installs it)", allow_module_level=True)


@pytest.fixture
def warnd(tmp_path: Path, broker: Broker) -> Iterator[DaemonProcess]:
    """warnd with sign-off on, loudspeakers and LED boards over the broker, and simulated devices."""
    with township(tmp_path, broker) as daemon:
        yield daemon


@pytest.fixture
def browser() -> Iterator[Any]:
    """Headless Debian chromium."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Console:
    """One browser tab on the console, with the test's words for what a person does there."""

    def __init__(self, browser: Any, url: str, *, phone: bool = False) -> None:
        """A fresh tab (its own sessionStorage): nobody signed in."""
        size = {"width": 390, "height": 844} if phone else {"width": 1280, "height": 900}
        self.context = browser.new_context(viewport=size, locale="zh-CN")
        self.page = self.context.new_page()
        self.page.set_default_timeout(UI_TIMEOUT_MS)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.url = url
        self.page.goto(url + "/")

    def shot(self, name: str) -> None:
        """A full-page screenshot as a test artefact."""
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def sign_in(self, token: str) -> None:
        """Type a token and sign in."""
        self.page.get_by_test_id("token").fill(token)
        self.page.get_by_test_id("signin").click()

    def sign_in_as(self, role: str) -> None:
        """Sign in with the role's token and wait for the board."""
        self.sign_in(TOKENS[role])
        self.page.get_by_test_id("board").wait_for()

    def error(self) -> str:
        """The page's error banner, once it shows."""
        box = self.page.get_by_test_id("error")
        box.wait_for(state="visible")
        return box.inner_text()

    def go(self, hash_: str) -> None:
        """Follow an in-page link."""
        self.page.evaluate("h => { location.hash = h; }", hash_)

    def api_status(self, method: str, path: str) -> int:
        """Status of an API call made by the page with its own signed-in token."""
        script = (
            "async ([m, p]) => (await fetch(p, {method: m, headers: "
            "{Authorization: 'Bearer ' + sessionStorage.getItem('warnd.token')}})).status"
        )
        return int(self.page.evaluate(script, [method, path]))

    def close(self) -> None:
        """Close the tab; no script error happened in it."""
        self.context.close()
        assert self.errors == []


def test_operator_issues_approver_signs_off_coverage_goes_live_operator_cancels(
    warnd: DaemonProcess, browser: Any
) -> None:
    """The issue's "Done when", in the browser."""
    expect = sync_api.expect
    # A wrong token: a clear message, in Chinese.
    op = Console(browser, warnd.url)
    op.shot("zh-01-sign-in")
    op.sign_in("not-a-token")
    assert "令牌无效" in op.error()
    op.shot("zh-02-wrong-token")
    op.sign_in_as("operator")
    expect(op.page.get_by_test_id("who")).to_contain_text("值班员")
    op.shot("zh-03-board-empty")

    # The issue form: missing fields are named, in Chinese.
    op.page.get_by_test_id("nav-issue").click()
    op.page.get_by_test_id("preview-button").click()
    message = op.error()
    assert "请填写必填项" in message and "标题" in message and "预警区域" in message
    op.shot("zh-04-issue-missing-fields")

    # A template, red, two villages; the preview (timeline, texts) and the audio, played.
    op.page.get_by_test_id("template-暴雨").click()
    op.page.get_by_test_id("level-red").check()
    for code in VILLAGES:
        op.page.get_by_test_id(f"village-{code}").check()
    expect(op.page.get_by_test_id("selected-count")).to_contain_text("2")
    expect(op.page.get_by_test_id("headline")).to_have_value("本镇发布暴雨红色预警")
    op.page.get_by_test_id("preview-button").click()
    expect(op.page.get_by_test_id("timeline")).to_contain_text("大喇叭")
    expect(op.page.get_by_test_id("text-loudspeaker")).to_contain_text("暴雨红色预警")
    op.page.get_by_test_id("play-audio").click()
    audio = op.page.get_by_test_id("audio")
    audio.wait_for()
    op.page.wait_for_function(
        "() => { const a = document.querySelector('[data-testid=audio]'); return a && a.duration > 1; }"
    )
    op.shot("zh-05-issue-preview")

    # Sent, with a confirmation step: it waits for sign-off.
    op.page.get_by_test_id("send").click()
    op.page.get_by_test_id("confirm-yes").click()
    expect(op.page.get_by_test_id("notice")).to_contain_text("等待带班领导审核签发")
    expect(op.page.get_by_test_id("state")).to_have_attribute("data-state", "awaiting_approval")
    wid = op.page.evaluate("() => decodeURIComponent(location.hash.split('/')[2])")
    op.shot("zh-06-warning-awaiting")
    # The operator has no approve button, and the API refuses the operator's approval.
    assert op.page.get_by_test_id("approve").count() == 0
    assert op.api_status("POST", f"/api/v1/warnings/{wid}/approve") == 403
    # Nothing reached any speaker while it waited.
    status, deliveries = warnd.call("GET", f"/api/v1/warnings/{wid}/deliveries", role="viewer")
    assert (status, deliveries["deliveries"]) == (200, [])

    # The approver, on a phone, sees it on the board and signs it off.
    lead = Console(browser, warnd.url, phone=True)
    lead.sign_in_as("approver")
    card = lead.page.locator(f"[data-testid=warning-card][data-id='{wid}']")
    expect(card).to_contain_text("待签发")
    lead.shot("zh-07-phone-board-awaiting")
    card.click()
    lead.page.get_by_test_id("approve").click()
    lead.shot("zh-08-phone-approve-confirm")
    lead.page.get_by_test_id("confirm-yes").click()
    expect(lead.page.get_by_test_id("notice")).to_contain_text("已签发")
    expect(lead.page.get_by_test_id("state")).to_have_attribute("data-state", "active")
    lead.shot("zh-09-phone-warning-released")

    # The operator's board (opened before the sign-off, never reloaded) reaches 100 % live.
    op.go("#/")
    expect(op.page.locator(f"[data-testid=warning-card][data-id='{wid}']")).to_contain_text("生效中")
    expect(op.page.get_by_test_id("coverage-loudspeaker")).to_have_text("100%")
    expect(op.page.get_by_test_id("coverage-led")).to_have_text("100%")
    op.shot("zh-10-board-coverage-100")
    op.go(f"#/w/{wid}")
    expect(op.page.get_by_test_id("per-village")).to_contain_text("大喇叭")
    op.shot("zh-11-warning-page-live")

    # The operator cancels it, with a confirmation step.
    op.page.get_by_test_id("cancel").click()
    op.page.get_by_test_id("cancel-reason").fill("雨势减弱")
    op.page.get_by_test_id("confirm-yes").click()
    expect(op.page.get_by_test_id("state")).to_have_attribute("data-state", "cancelled")
    op.shot("zh-12-warning-cancelled")
    op.go("#/devices")
    expect(op.page.get_by_test_id("device-table")).to_contain_text("在线")
    op.shot("zh-13-devices")
    lead.go("#/audit")
    expect(lead.page.get_by_test_id("audit")).to_contain_text("签发")
    lead.shot("zh-14-phone-audit")
    # The audit page is live: a draft another operator submits now appears without a reload.
    body = warning_body(area={"codes": [VILLAGES[0]]}, level="yellow", headline="本镇发布大风黄色预警")
    status, drafted = warnd.call("POST", "/api/v1/warnings", body, role="operator")
    assert (status, drafted["state"]) == (202, "awaiting_approval")
    expect(lead.page.get_by_test_id("audit")).to_contain_text(drafted["id"])

    # A viewer trying to issue is told why, in Chinese.
    viewer = Console(browser, warnd.url)
    viewer.sign_in_as("viewer")
    assert viewer.page.get_by_test_id("nav-issue").count() == 0
    viewer.go("#/issue")
    assert "不能发布预警" in viewer.error()
    viewer.shot("zh-15-viewer-cannot-issue")

    # Every page again in English.
    admin = Console(browser, warnd.url)
    admin.page.get_by_test_id("lang").click()
    admin.shot("en-01-sign-in")
    admin.sign_in_as("admin")
    expect(admin.page.get_by_test_id("nav-board")).to_have_text("Board")
    admin.shot("en-02-board")
    admin.go("#/issue")
    admin.page.get_by_test_id("template-台风").click()
    admin.page.get_by_test_id("select-all").click()
    admin.page.get_by_test_id("preview-button").click()
    expect(admin.page.get_by_test_id("timeline")).to_contain_text("Loudspeaker")
    admin.shot("en-03-issue-preview")
    admin.go(f"#/w/{wid}")
    expect(admin.page.get_by_test_id("state")).to_have_text("Cancelled")
    admin.shot("en-04-warning")
    admin.go("#/devices")
    expect(admin.page.get_by_test_id("device-table")).to_contain_text("online")
    admin.shot("en-05-devices")
    admin.go("#/audit")
    expect(admin.page.get_by_test_id("audit")).to_contain_text("approve")
    admin.shot("en-06-audit")
    for tab in (op, lead, viewer, admin):
        tab.close()
