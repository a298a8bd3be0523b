"""`orchestrate serve` scores the /predict images that wait together, in one ONNX Runtime call.

Batching must never mix requests up: under many concurrent requests each answer is the prediction
the model gives that image alone, and an image that cannot be read fails its own request only,
whichever batch it would have joined. The batcher itself, on a real model: images that arrive
while a call runs wait for the next one, at most max_batch to a call.
"""
import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from orchestrator.inference.classifier import OnnxClassifier
from orchestrator.inference.serve import Batcher
from serving import running_server, train_tiny_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return train_tiny_model(tmp_path_factory.mktemp("batching"))


@pytest.fixture(scope="module")
def images(model):
    _, data = model
    return [path for label in ("red", "green", "blue") for path in sorted((data / label).glob("*.*"))[:4]]


@pytest.fixture(scope="module")
def alone(model, images):
    """Each image's probabilities from the model, scored on its own (a batch of one)."""
    classifier = OnnxClassifier(model[0])
    return {path.name: classifier.probabilities(classifier.load(path)[np.newaxis])[0] for path in images}


def test_concurrent_requests_each_get_their_own_image_s_prediction_and_errors_stay_theirs(model, images, alone):
    labels = OnnxClassifier(model[0]).labels
    broken = {"broken.png": b"not an image", "empty.png": b"", "cut.jpg": images[0].read_bytes()[:60]}
    jobs = [(path.name, path.read_bytes()) for path in images] * 4
    for i, item in enumerate(broken.items()):  # spread among the good ones, so they share batches
        jobs.insert(7 + 13 * i, item)

    def ask(job):
        name, data = job
        with httpx.Client(timeout=60) as client:
            if name.endswith(".png") and name in broken:  # JSON and multipart requests batch alike
                return job, client.post(f"{url}/predict?top_k=3", json={"data": base64.b64encode(data).decode()})
            return job, client.post(f"{url}/predict?top_k=3", files={"file": (name, data)})

    with running_server(model[0]) as url, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, jobs))
    for (name, _), response in answers:
        if name in broken:
            assert response.status_code in (400, 422), response.text
            assert response.json()["error"]
            continue
        assert response.status_code == 200, (name, response.text)
        got = response.json()
        assert got["image"] == name
        want = alone[name]
        assert got["label"] == labels[int(np.argmax(want))]
        scores = {t["label"]: t["score"] for t in got["top_k"]}
        assert [scores[label] for label in labels] == pytest.approx(want.tolist(), rel=1e-4, abs=1e-6)


def test_images_waiting_while_a_call_runs_go_into_the_next_one_at_most_max_batch(model, images, alone):
    classifier = OnnxClassifier(model[0])
    sources = images[:10]

    async def score_together():
        batcher = Batcher(classifier, max_batch=4)
        tasks = [asyncio.create_task(batcher.probabilities(classifier.load(path))) for path in sources]
        while len(batcher.waiting) in (0, len(sources)):  # until the first call has taken its images
            await asyncio.sleep(0)
        waiting_during_first_call = len(batcher.waiting)
        results = await asyncio.gather(*tasks)
        return waiting_during_first_call, results, batcher

    waiting, results, batcher = asyncio.run(score_together())
    assert waiting == len(sources) - 4
    for path, probs in zip(sources, results, strict=True):
        assert probs == pytest.approx(alone[path.name], rel=1e-4, abs=1e-6)
    assert batcher.waiting == [] and batcher.running is None  # the next image starts a call at once
