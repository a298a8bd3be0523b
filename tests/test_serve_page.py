"""The web page of `orchestrate serve` in a real headless browser (Debian's chromium, driven by
playwright; no browser is ever downloaded): pick an image or drop one on the page, see it, its
label and the bar chart.

The screenshot is saved to test-artifacts/serve-page.png for a person to look at.
"""
import base64
import json
import os

import pytest

from conftest import CHROMIUM, CHROMIUM_ARGS, REPO, run_cli
from serving import running_server, train_tiny_model

SCREENSHOT = REPO / "test-artifacts" / "serve-page.png"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists() and not os.environ.get("CI"),
                       reason="Debian's chromium is not installed at /usr/bin/chromium (bash scripts/setup_browser.sh)"),
]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    classes = ("red", "green", "blue", "yellow", "black", "white")  # enough bars to see a chart
    return train_tiny_model(tmp_path_factory.mktemp("page"), classes=classes)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def server(model):
    with running_server(model[0]) as base_url:
        yield base_url


def predicted(model_path, image):
    """What `orchestrate predict --top-k 5 --json` answers for one image: what the page must show."""
    result = run_cli("predict", model_path, image, "--top-k", "5", "--json")
    assert result.returncode == 0, result.stderr
    (want,) = json.loads(result.stdout)
    return want


def open_page(browser, base_url, errors):
    page = browser.new_page(viewport={"width": 900, "height": 640})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(base_url + "/")
    page.wait_for_function("document.getElementById('model').textContent.includes('6 labels')")
    return page


def test_pick_an_image_and_see_its_label_and_the_top_classes(model, server, browser, tmp_path):
    model_path, data = model
    image = sorted((data / "yellow").glob("*.png"))[0]
    want = predicted(model_path, image)

    errors = []
    page = open_page(browser, server, errors)
    page.set_input_files("#file", str(image))
    page.wait_for_selector("#result:not([hidden]) #bars .bar", timeout=20_000)

    assert page.text_content("#label") == want["label"]
    bars = page.query_selector_all("#bars .bar")
    assert [bar.get_attribute("data-label") for bar in bars] == [t["label"] for t in want["top_k"]]
    scores = [float(bar.get_attribute("data-score")) for bar in bars]
    assert scores == pytest.approx([t["score"] for t in want["top_k"]], rel=1e-5, abs=1e-6)
    widths = [bar.query_selector(".fill").bounding_box()["width"] for bar in bars]
    track = bars[0].query_selector(".track").bounding_box()["width"]
    for width, score in zip(widths, scores):  # each bar is drawn to its score
        assert width == pytest.approx(max(score * track, 2), abs=2)
    preview = page.query_selector("#preview")
    assert page.evaluate("(img) => img.complete && img.naturalWidth", preview) == 32  # the picked image
    assert page.is_hidden("#error") and not errors

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)

    # A file that is not an image: the page shows the service's error, not a blank result.
    bad = tmp_path / "notes.png"
    bad.write_text("this is not an image")
    page.set_input_files("#file", str(bad))
    page.wait_for_selector("#error:not([hidden])", timeout=20_000)
    assert "cannot read image" in page.text_content("#error") and page.is_hidden("#result")
    assert "'notes.png'" in page.text_content("#error")  # named by its file name
    page.close()


def drop_file(page, path, mime):
    """Drag `path` over the drop zone and drop it, as a file dragged from the desktop arrives: a
    DataTransfer holding a File, built in the page, on dragover and then drop events."""
    transfer = page.evaluate_handle("""([name, data, type]) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type }));
        return transfer;
    }""", [path.name, base64.b64encode(path.read_bytes()).decode(), mime])
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    highlighted = page.evaluate("document.getElementById('drop').classList.contains('over')")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    return highlighted


def test_drop_an_image_and_see_its_label_and_the_top_classes(model, server, browser, tmp_path):
    model_path, data = model
    image = sorted((data / "blue").glob("*.png"))[0]
    want = predicted(model_path, image)

    errors = []
    page = open_page(browser, server, errors)
    assert drop_file(page, image, "image/png")  # the zone shows it would take the file
    page.wait_for_selector("#result:not([hidden]) #bars .bar", timeout=20_000)
    assert not page.evaluate("document.getElementById('drop').classList.contains('over')")
    assert page.text_content("#label") == want["label"]
    bars = page.query_selector_all("#bars .bar")
    assert [bar.get_attribute("data-label") for bar in bars] == [t["label"] for t in want["top_k"]]
    assert [float(bar.get_attribute("data-score")) for bar in bars] == pytest.approx(
        [t["score"] for t in want["top_k"]], rel=1e-5, abs=1e-6)
    assert page.evaluate("(img) => img.complete && img.naturalWidth", page.query_selector("#preview")) == 32

    # A dropped file that is not an image: the service's error, naming the file.
    bad = tmp_path / "dropped.png"
    bad.write_text("this is not an image")
    drop_file(page, bad, "image/png")
    page.wait_for_selector("#error:not([hidden])", timeout=20_000)
    assert "cannot read image" in page.text_content("#error") and "'dropped.png'" in page.text_content("#error")
    assert page.is_hidden("#result") and not errors
    page.close()
