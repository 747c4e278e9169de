"""The live dashboard in real headless Chromium (Debian's ``chromium`` and ``chromium-driver``).

A campaign's ledger is written while the page is open, through the project's own Ledger: the
page must gain the candidate's row and a point on its score figure from the server-sent
stream. An agent's hostile hypothesis is shown as text, and the server refuses a request
without its token. Skipped where no Chromium is installed (``make install`` adds it on Debian;
MLIPILOT_REQUIRE_BROWSER_TESTS=1 makes that a failure instead, as in CI).
"""

from __future__ import annotations

import os
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from factories import dashboard_events, serve_dashboard

from mlipilot.ledger import Ledger, LedgerEvent

TOKEN = "dashboard-test-token"
VALIDATED = LedgerEvent(
    campaign="-",
    event="validation",
    iteration=1,
    candidate="it001",
    status="failed",
    reason="1 of 2 checks pass (cu-emt v1); failing: c12_GPa",
    detail={
        "checks": [
            {"metric": "c11_GPa", "value": 170.0, "reference": 172.6, "tolerance": "± 15 %",
             "passed": True},
            {"metric": "c12_GPa", "value": 60.0, "reference": 115.4, "tolerance": "± 15 %",
             "passed": False},
        ]
    },
)  # fmt: skip
HOSTILE = '<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'


def _chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    found = _chromium()
    if found is None:
        reason = "needs Debian's chromium and chromium-driver (apt)"
        if os.environ.get("MLIPILOT_REQUIRE_BROWSER_TESTS"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    runs = tmp_path / "runs"
    runs.mkdir()
    with serve_dashboard(runs, TOKEN) as base:
        yield base, runs


def _wait(check, what, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


def _page_state(browser) -> str:
    """What the page shows and logged: the failure message of a browser test."""
    logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
    main = browser.execute_script("return document.getElementById('main').innerText")
    return f"page: {main[:500]!r}; console: {logs}"


def test_a_request_without_the_token_is_refused(served: tuple[str, Path]) -> None:
    base, _ = served
    for path in ("/", "/api/campaigns", "/static/app.js", "/?token=wrong"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=5)
        assert refused.value.code == 401, path
    request = urllib.request.Request(
        base + "/api/campaigns", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.status == 200


def test_a_running_campaign_gains_a_row_and_a_point_as_its_ledger_grows(
    browser, served: tuple[str, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    base, runs = served
    run_dir = runs / "cu-live-20261205-000000"
    run_dir.mkdir()
    shutil.copyfile(
        Path(__file__).parents[2] / "scorecard" / "cu-emt.yaml", run_dir / "scorecard.yaml"
    )
    started, baseline, hostile = dashboard_events(run_dir.name, hypothesis=HOSTILE)
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.append_all(started + baseline)
        browser.get(f"{base}/?token={TOKEN}")  # the token becomes a cookie
        browser.get(f"{base}/#/c/{run_dir.name}")
        _wait(
            lambda: browser.find_elements(By.ID, "candidates"),
            lambda: f"the candidates table ({_page_state(browser)})",
        )
        rows = browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")
        assert [r.get_attribute("data-candidate") for r in rows] == ["it000"]
        points = browser.find_element(By.ID, "score-figure").get_attribute("data-points")
        assert points == "1"
        ledger.append_all(hostile)  # the campaign goes on while the page is open
        _wait(
            lambda: len(browser.find_elements(By.CSS_SELECTOR, "#candidates tbody tr")) == 2,
            "the new candidate's row",
        )
        _wait(
            lambda: browser.find_element(By.ID, "score-figure").get_attribute("data-points") == "2",
            "the new point on the score figure",
        )
    shown = browser.find_element(By.CSS_SELECTOR, '[data-candidate="it001"] .hypothesis')
    assert shown.text == HOSTILE  # as text, whole
    assert browser.execute_script("return window.pwned === undefined")
    assert not browser.find_elements(By.CSS_SELECTOR, "#candidates script, #candidates img")
    assert browser.find_element(By.ID, "decided").text == "1"  # the baseline is not counted
    with Ledger(run_dir / "ledger.sqlite") as ledger:
        ledger.append(VALIDATED.model_copy(update={"campaign": run_dir.name}))
    browser.get(f"{base}/#/c/{run_dir.name}/it001")  # the candidate's own view
    checks = _wait(
        lambda: browser.find_elements(By.CSS_SELECTOR, "#validation tbody tr"),
        lambda: f"the validation table ({_page_state(browser)})",
    )
    assert [row.find_element(By.TAG_NAME, "td").text for row in checks] == ["c11_GPa", "c12_GPa"]
    diff = browser.find_element(By.ID, "recipe-diff").text
    assert "lr" in diff and "0.001" in diff and "0.01" in diff
    assert browser.find_element(By.CSS_SELECTOR, "p.hypothesis").text == HOSTILE
    browser.get("about:blank")  # closes the page's stream
