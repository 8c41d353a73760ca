"""The page (app.py) in a real headless browser: upload an image of another size than the model's,
paint a stroke, run, wait for the last step, and check that the result differs from the input only
inside the hole. Skipped when gradio, selenium, chromium or chromedriver is missing (CI installs them)."""
from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskgit_inpaint import Decoding

pytest.importorskip("gradio")
webdriver = pytest.importorskip("selenium.webdriver")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("chromium and chromedriver are not installed", allow_module_level=True)

from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    port = free_port()
    pictures = tmp_path_factory.mktemp("picker")  # the picker's folder: CI has no built dataset
    for i, colour in enumerate([(200, 40, 40), (40, 160, 60), (50, 60, 200)]):
        Image.new("RGB", (64, 64), colour).save(pictures / f"picture_{i}.png")
    log = tmp_path_factory.mktemp("server") / "app.log"  # the server's output, read by the tests
    server = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--test-images", str(pictures)],
                              cwd=ROOT, stdout=log.open("w"), stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(480):  # a busy machine imports gradio and loads the model slowly
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None:
                    pytest.fail(f"app.py exited: {log.read_text()}")
                time.sleep(0.5)
        else:
            pytest.fail("app.py did not serve within 240 s")
        options = webdriver.ChromeOptions()
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1400,1800"):
            options.add_argument(flag)
        options.binary_location = CHROMIUM
        try:
            driver = webdriver.Chrome(service=webdriver.ChromeService(DRIVER), options=options)
        except WebDriverException as err:
            pytest.skip(f"chromium does not start here: {err.msg}")
        driver.get(url)
        driver.server_log = log
        yield driver
        driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


def fetch(driver, selector: str) -> np.ndarray:
    src = driver.find_element(By.CSS_SELECTOR, f"{selector} img").get_attribute("src")
    with urllib.request.urlopen(src, timeout=10) as response:
        return np.asarray(Image.open(io.BytesIO(response.read())).convert("RGB"))


def test_upload_paint_run_changes_only_the_hole(page, tmp_path):
    image = np.zeros((80, 96, 3), dtype=np.uint8)  # not the model's 64x64: resized and given back at 96x80
    image[..., 0] = np.linspace(0, 255, 96)[None].astype(np.uint8)
    image[..., 1] = 120
    image[..., 2] = np.linspace(255, 0, 80)[:, None].astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "gradient.png")
    wait = WebDriverWait(page, 120)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#image input[type=file]"))
    # a busy machine renders the page's parts one by one: wait for the button too
    run = wait.until(expected_conditions.element_to_be_clickable((By.CSS_SELECTOR, "#run")))

    assert not page.find_elements(By.XPATH, "//*[normalize-space(text())='Error']")  # no badges before a run
    thumbnails = page.find_elements(By.CSS_SELECTOR, "#picker img")  # the test-image picker shows pictures
    assert thumbnails and thumbnails[0].size["width"] > 16
    run.click()  # nothing uploaded: one friendly line in the status, no traceback, no red "Error" panels
    wait.until(lambda d: "Upload an image or pick a test image first" in d.find_element(By.CSS_SELECTOR,
                                                                                         "#status").text)
    assert "Traceback" not in page.page_source
    assert not page.find_elements(By.XPATH, "//*[normalize-space(text())='Error']")

    (tmp_path / "notes.txt").write_text("not an image\n")  # not an image: no server traceback, the page goes on
    page.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(tmp_path / "notes.txt"))
    time.sleep(2)
    assert "Traceback" not in page.server_log.read_text()

    page.find_element(By.CSS_SELECTOR, "#image input[type=file]").send_keys(str(tmp_path / "gradient.png"))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#editor button[aria-label=Brush]"))
    time.sleep(2)  # the editor takes the image as its background
    page.find_element(By.CSS_SELECTOR, "#editor button[aria-label=Brush]").click()
    canvas = page.find_element(By.CSS_SELECTOR, "#editor canvas")
    ActionChains(page).move_to_element_with_offset(canvas, -50, 0).click_and_hold().move_by_offset(40, 5) \
        .move_by_offset(40, -5).release().perform()
    page.find_element(By.CSS_SELECTOR, "#run").click()
    wait.until(lambda d: "done:" in d.find_element(By.CSS_SELECTOR, "#status").text)
    status = page.find_element(By.CSS_SELECTOR, "#status").text
    steps = Decoding().steps  # the page starts at the CLI's defaults: S follows T
    assert f"done: step {steps}: 0 tokens masked" in status and "96x80: resized to 64x64" in status

    assert page.find_element(By.CSS_SELECTOR, "#result img").size["height"] > 150  # readable, not ~45 px
    result, hole = fetch(page, "#result"), fetch(page, "#hole")[..., 0] > 127
    assert result.shape == image.shape and hole.shape == image.shape[:2]
    assert 0 < hole.mean() < 0.9
    assert np.array_equal(result[~hole], image[~hole])  # every unpainted pixel exactly
    assert (result[hole] != image[hole]).any(axis=-1).mean() > 0.5
    assert fetch(page, "#steps").shape[1] > 64 * (steps + 1)  # the labelled figure: the input, then each step
