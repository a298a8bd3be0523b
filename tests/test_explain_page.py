"""`orchestrate serve`'s POST /explain, and the page showing the heat map beside the scores in a
real headless browser (Debian's chromium, driven by playwright, as tests/test_serve_page.py).

The screenshot is saved to test-artifacts/explain-page.png for a person to look at.
"""
import base64
import io
import os

import httpx
import pytest
from PIL import Image

from conftest import CHROMIUM, CHROMIUM_ARGS, REPO
from serving import running_server, train_tiny_model

SCREENSHOT = REPO / "test-artifacts" / "explain-page.png"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("explain"))


@pytest.fixture(scope="module")
def server(model):
    with running_server(model[0]) as base_url:
        yield base_url


def overlay_of(answer):
    prefix = "data:image/png;base64,"
    assert answer["overlay"].startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(answer["overlay"][len(prefix):])))


def test_explain_answers_the_prediction_and_the_heat_map_over_the_image(model, server):
    model_path, data = model
    image = sorted((data / "green").glob("*.png"))[0]
    with open(image, "rb") as f:
        predicted = httpx.post(f"{server}/predict", files={"file": (image.name, f, "image/png")}).json()
    with open(image, "rb") as f:
        answer = httpx.post(f"{server}/explain", files={"file": (image.name, f, "image/png")}).json()
    assert {k: answer[k] for k in ("image", "label", "score", "top_k")} == predicted
    assert answer["explained"] == predicted["label"]
    with Image.open(image) as original:
        assert overlay_of(answer).size == original.size
    other = next(label for label in ("red", "green", "blue") if label != predicted["label"])
    chosen = httpx.post(f"{server}/explain", params={"label": other},
                        json={"data": base64.b64encode(image.read_bytes()).decode()}).json()
    assert chosen["explained"] == other and chosen["label"] == predicted["label"]
    unknown = httpx.post(f"{server}/explain", params={"label": "purple"},
                         json={"data": base64.b64encode(image.read_bytes()).decode()})
    assert unknown.status_code == 400 and "purple" in unknown.json()["error"]
    bad = httpx.post(f"{server}/explain", files={"file": ("notes.png", b"not an image", "image/png")})
    assert bad.status_code == 422 and "cannot read image" in bad.json()["error"]


@pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                    reason="Debian's chromium is not installed at /usr/bin/chromium (bash scripts/setup_browser.sh)")
def test_the_page_shows_the_heat_map_beside_the_scores(model, server):
    from playwright.sync_api import sync_playwright

    model_path, data = model
    image = sorted((data / "red").glob("*.png"))[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 640})
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(server + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('3 labels')")
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#result:not([hidden]) #overlay:not([hidden])", timeout=20_000)
            label = page.text_content("#label")
            overlay = page.query_selector("#overlay")
            assert overlay.get_attribute("data-label") == label
            assert page.evaluate("(img) => img.complete && img.naturalWidth", overlay) == 32
            assert label in page.text_content("#overlay-note")
            shown, scores = overlay.bounding_box(), page.query_selector("#bars").bounding_box()
            assert shown["width"] > 100 and shown["x"] + shown["width"] <= scores["x"]  # beside the scores
            assert not errors
            SCREENSHOT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
