"""carcli serve end to end: the real server in its own process, its page driven in headless Chromium (selenium)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
PHONE = (412, 915)  # a common phone viewport, in CSS pixels


def _need_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"{', '.join(missing)} missing: .ci/run installs chromium and chromium-driver")
    if missing:
        pytest.skip(f"{', '.join(missing)} missing (apt-get install chromium chromium-driver)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the server exited with {server.returncode}: {server.communicate()[1]}")
        try:
            with urllib.request.urlopen(url + "health", timeout=5) as answer:
                return json.load(answer)
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"{url} did not answer within {seconds} s")


@pytest.fixture
def server(trained_checkpoint, tmp_path):
    """`carcli serve` on a free port of 127.0.0.1; stopped with SIGINT (Ctrl-C) at the end, which must exit 130."""
    port = _free_port()
    command = [sys.executable, "-m", "carcli", "serve", "--model", str(trained_checkpoint), "--port", str(port)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            out, err = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
    assert process.returncode == 130, err
    assert f"at {url}" in out and "stopped after" in out
    assert "Traceback" not in out + err


@pytest.fixture
def browser(tmp_path):
    _need_chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--window-size={PHONE[0]},{PHONE[1]}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _api_answer(url: str, photo: Path) -> dict:
    request = urllib.request.Request(url + "predict", photo.read_bytes(), {"Content-Type": "image/jpeg"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.load(answer)["predictions"][0]


def _wait_for_answer(browser, top_class: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def settled(driver) -> bool:
        status = driver.find_element(By.ID, "status")
        return status.text == "done" or "error" in (status.get_attribute("class") or "")

    WebDriverWait(browser, 120).until(settled)
    assert browser.find_element(By.ID, "status").text == "done"
    assert browser.find_element(By.ID, "top1").text == top_class
    heatmap = browser.find_element(By.ID, "heatmap")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth", heatmap) > 0)
    assert heatmap.is_displayed() and heatmap.get_attribute("src").startswith("data:image/png;base64,")


DROP = """
const [name, data] = arguments;
const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
const files = new DataTransfer();
files.items.add(new File([bytes], name, {type: "image/jpeg"}));
document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: files, bubbles: true}));
"""


@pytest.mark.slow
def test_the_page_recognises_a_photo_in_chromium_on_a_phone_and_by_drag_and_drop(
    server, browser, real_folder_set, tmp_path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photos = sorted((real_folder_set / "val").rglob("*.jpg"))
    expected = _api_answer(server, photos[5])
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda d: "classes" in d.find_element(By.ID, "model").text)
    assert browser.find_element(By.ID, "explain").is_selected()
    browser.find_element(By.ID, "camera").send_keys(str(photos[5]))
    _wait_for_answer(browser, expected["top_k"][0]["label"])
    labels = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#top5 .label")]
    assert labels == [item["label"] for item in expected["top_k"]]
    assert browser.find_element(By.ID, "make").text == expected["make"]["label"]
    assert browser.find_element(By.ID, "year").text == expected["year"]["label"]
    assert browser.find_element(By.ID, "modernity").text == f"{expected['modernity']:.2f}"
    assert browser.execute_script("return document.getElementById('photo').naturalWidth") > 0
    fits = "return document.documentElement.scrollWidth <= window.innerWidth"
    assert browser.execute_script(fits), "the page scrolls sideways on a phone"
    browser.save_screenshot(str(tmp_path / "phone.png"))
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(PHONE[0], height + 200)
    browser.save_screenshot(str(tmp_path / "phone-full.png"))
    assert (tmp_path / "phone.png").stat().st_size > 10_000

    browser.set_window_size(1280, 1000)  # a desktop: drop another photo on the box
    other = photos[-1]
    shown = browser.find_element(By.ID, "photo").get_attribute("src")
    browser.execute_script(DROP, other.name, base64.b64encode(other.read_bytes()).decode())
    assert browser.find_element(By.ID, "photo").get_attribute("src") not in (shown, None)
    _wait_for_answer(browser, _api_answer(server, other)["top_k"][0]["label"])
    browser.save_screenshot(str(tmp_path / "desktop.png"))
