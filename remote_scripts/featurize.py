"""Linear mode's features: the frozen backbone's output for every usable image, computed once.

The head then trains on them for many epochs in seconds, and they are kept in --checkpoint-dir
(features.pt), so a resumed linear run does not featurize again; a search shares them between its
trials (OneRun.features). On a CPU with onnxruntime installed, ONNX Runtime computes them with the
very graph that model.onnx is then made of.
"""
import os

import numpy as np
import torch

from . import imaging
from .atomic import write_atomically
from .checkpoints import read_own
from .export import export_backbone


@torch.no_grad()
def featurize(model, batches, indices, batch_size, report):
    """Linear mode: (the frozen backbone's features [N, D] on the CPU, rows `indices` filled; the
    backbone's ONNX graph that computed them, or None when torch did).

    Always float32, so that the head is fitted and tested on exactly the features the exported
    (float32) ONNX model computes: metrics.json is what model.onnx gives. On a CPU with
    onnxruntime installed, ONNX Runtime runs export_backbone's graph, which export_onnx then
    reuses for model.onnx, so the backbone is traced once per run: on the 2-core build machine
    (AVX-512) its loop runs 1.6x the images/s of a plain torch loop, where torch's own
    channels_last and inference_mode gain about 5% (benchmarks/train_throughput.py). Elsewhere
    (a GPU, no onnxruntime: it is optional in the job) torch computes them.
    """
    report.event("phase", name="featurize")
    model.eval()
    threads = torch.get_num_threads()
    graph, session = backbone_in_onnx_runtime(model, batches, threads)
    if session is not None:
        # ONNX Runtime computes on threads of its own. torch's small ops between its runs (the
        # batch's conversion and normalization) take one thread, so that torch's OpenMP threads,
        # which spin a while after each op, do not hold the cores ONNX Runtime is computing on.
        torch.set_num_threads(1)
    throttle = report.throttle("featurize", len(indices))
    features, done = None, 0
    try:
        for idx, pixels, _ in batches.prefetch([indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]):
            x = batches.normalize(pixels)
            if session is not None:
                out = torch.from_numpy(session.run(None, {imaging.INPUT_NAME: x.contiguous().numpy()})[0])
            else:
                with torch.inference_mode():
                    out = model.backbone(x).float().cpu()
            if features is None:
                features = torch.zeros(len(batches.data.paths), out.shape[1])
            features[torch.from_numpy(idx)] = out
            done += len(idx)
            throttle.update(done)
    finally:
        torch.set_num_threads(threads)
    return features, graph


def backbone_in_onnx_runtime(model, batches, threads):
    """(ONNX graph of the frozen backbone, an ONNX Runtime session running it on `threads` CPU
    threads), or (None, None) on a GPU or without onnxruntime."""
    if batches.device.type != "cpu":
        return None, None
    try:
        import onnxruntime
    except ImportError:
        return None, None
    graph = export_backbone(model.backbone, batches.data.spec)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
    return graph, session


def cached_features(args, model, dataset, batches, fingerprint, report, job):
    """Linear mode's (backbone features, their ONNX graph or None): see featurize; from the
    checkpoint folder when an earlier attempt made them (no graph then), or from the job when
    an earlier trial of a search did (OneRun.features)."""
    path = os.path.join(args.checkpoint_dir, "features.pt") if args.checkpoint_dir else None
    key = {k: fingerprint[k] for k in ("arch", "weights", "image_size", "data")}
    if path and os.path.exists(path):
        saved = read_own(path)
        if isinstance(saved, dict) and saved.get("key") == key:
            report.log(f"features loaded from {path}")
            return saved["features"], None
    usable = np.sort(np.concatenate([dataset.train, dataset.val, dataset.test]))
    features, graph = job.features(tuple(key.values()),
                                   lambda: featurize(model, batches, usable, args.batch_size, report))
    if path:
        write_atomically(path, lambda tmp: torch.save({"key": key, "features": features}, tmp))
    return features, graph

