"""ONNX export of a trained classifier, self-describing through its metadata (torch >= 1.13).

The file holds input `image` (float32 [batch, 3, H, W], batch axis dynamic), output
`probabilities` (softmax applied), and in metadata_props the label names, the preprocessing
(imaging.preprocess_spec) and the architecture and mode, so the file alone is enough to predict.
"""
import copy
import inspect
import io
import json
import warnings

import onnx
import onnx.compose
import torch
import torch.nn as nn

from . import imaging
from .atomic import write_atomically

# The newest opset torch 1.13's exporter writes; ONNX Runtime >= 1.13 runs it.
ONNX_OPSET = 17
ARCH_KEY = "orchestrate.arch"
MODE_KEY = "orchestrate.mode"
FEATURES_NAME = "features"  # the backbone's output, inside a linear-mode graph
HEAD_PREFIX = "head/"


class Probabilities(nn.Module):
    """What is exported: class probabilities, so the ONNX output needs no post-processing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return torch.softmax(self.model(image), dim=1)


def exportable(module):
    """A float32 CPU copy of `module` in eval mode and contiguous layout, for the exporter.

    A copy, so that the trained module (maybe on a GPU, channels_last, and put back into train
    mode by the exporter) is left as it was.
    """
    return copy.deepcopy(module).cpu().float().eval().to(memory_format=torch.contiguous_format)


def to_onnx(module, example, input_name, output_name):
    """`module` traced on `example` -> the ONNX model (serialized bytes) with a dynamic batch axis.

    Built in memory: the metadata is added before the one write to disk, and linear mode runs
    the frozen backbone's graph in ONNX Runtime from these bytes (train.featurize).
    """
    kwargs = dict(input_names=[input_name], output_names=[output_name],
                  dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                  opset_version=ONNX_OPSET, do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript; the TorchScript
        # exporter needs nothing more and behaves the same from torch 1.13 on.
        kwargs["dynamo"] = False
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        # The tracer runs the module once on the example. oneDNN would first build a kernel for
        # each convolution shape, for that one use (0.6 s for ResNet50 on the build machine);
        # the reference kernels compute a batch of 2 in a tenth of that. The graph is the same.
        with torch.backends.mkldnn.flags(enabled=False):
            torch.onnx.export(module, (example,), buffer, **kwargs)
    return buffer.getvalue()


def export_backbone(backbone, spec):
    """The frozen backbone alone as ONNX (serialized): image [batch, 3, H, W] -> features [batch, D].

    Linear mode computes its cached features with this graph (in ONNX Runtime) and export_onnx
    puts the trained head behind the very same graph, so metrics.json is computed from exactly
    the features model.onnx computes, and the backbone is traced once per run instead of twice.
    """
    height, width = spec["size"]
    example = torch.zeros(2, 3, height, width)  # batch 2: an exporter may specialize a batch of 1
    return to_onnx(exportable(backbone), example, imaging.INPUT_NAME, FEATURES_NAME)


def export_onnx(model, path, classes, spec, arch, mode, backbone=None):
    """Write softmax(model) to `path` as ONNX with a dynamic batch axis and our metadata.

    `backbone`: export_backbone's graph of model.backbone, when the run has it already (linear
    mode in ONNX Runtime); only the head is traced then, and joined behind it.
    """
    if backbone is None:
        height, width = spec["size"]
        graph = onnx.load_from_string(to_onnx(Probabilities(exportable(model)), torch.zeros(2, 3, height, width),
                                              imaging.INPUT_NAME, imaging.OUTPUT_NAME))
    else:
        backbone = onnx.load_from_string(backbone)
        features = backbone.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        head = onnx.load_from_string(to_onnx(Probabilities(exportable(model.head)), torch.zeros(2, features),
                                             FEATURES_NAME, imaging.OUTPUT_NAME))
        # Both graphs name their constants onnx::<op>_<n>, so every name of the head gets a prefix
        # (add_prefix's options to spare inputs and outputs mean other things in onnx 1.12), and
        # its output takes back its own name once joined. merge_graphs, not merge_models: that
        # one also runs the checker over the whole model (a third of a second for ResNet50).
        onnx.compose.add_prefix(head, HEAD_PREFIX, inplace=True)
        joined = onnx.compose.merge_graphs(backbone.graph, head.graph, name=backbone.graph.name,
                                           io_map=[(FEATURES_NAME, HEAD_PREFIX + FEATURES_NAME)])
        for node in joined.node:
            for i, name in enumerate(node.output):
                if name == HEAD_PREFIX + imaging.OUTPUT_NAME:
                    node.output[i] = imaging.OUTPUT_NAME
        joined.output[0].name = imaging.OUTPUT_NAME
        graph = onnx.helper.make_model(joined, opset_imports=backbone.opset_import, ir_version=backbone.ir_version,
                                       producer_name=backbone.producer_name,
                                       producer_version=backbone.producer_version)
    onnx.helper.set_model_props(graph, {
        imaging.LABELS_KEY: json.dumps(list(classes)), imaging.PREPROCESS_KEY: json.dumps(spec),
        ARCH_KEY: arch, MODE_KEY: mode})
    write_atomically(path, graph.SerializeToString())
