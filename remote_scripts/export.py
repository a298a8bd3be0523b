"""ONNX export of a trained classifier, self-describing through its metadata (torch >= 1.13).

The file holds input `image` (float32 [batch, 3, H, W], batch axis dynamic), output
`probabilities` (softmax applied), and in metadata_props the label names, the preprocessing
(imaging.preprocess_spec) and the architecture and mode, so the file alone is enough to predict.

A second output, `cam` (float32 [batch, classes, h, w]), is the class activation map (Zhou et
al., 2016) where the backbone's features are a global average of its last convolutional feature
map with nothing between them and the linear head (the ResNets, EfficientNet): the head applied
at each position of that map, in logits, so its mean over (h, w) is the logit the probabilities
come from. Metadata imaging.CAM_KEY says which: the output's name, or why the model has none.
"""
import copy
import inspect
import io
import json
import math
import warnings

import onnx
import onnx.compose
import onnx.numpy_helper
import onnx.shape_inference
import torch
import torch.nn as nn

from . import imaging
from .atomic import write_atomically
from .models import cam_unavailable

# The newest opset torch 1.13's exporter writes; ONNX Runtime >= 1.13 runs it.
ONNX_OPSET = 17
ARCH_KEY = "orchestrate.arch"
MODE_KEY = "orchestrate.mode"
FEATURES_NAME = "features"  # the backbone's output, inside a linear-mode graph
HEAD_PREFIX = "head/"
# ONNX Runtime computes every output on every call, asked for or not (a graph output is not pruned
# by the fetch list), so `cam` is added only where its arithmetic is at most this share of the
# model's: predict, score and serve pay it without using it.
CAM_MAX_COST = 0.01


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
    why_not = cam_unavailable(model.backbone) or cam_too_costly(graph, len(classes))
    if why_not is None:
        add_cam(graph.graph, model.head, len(classes))
    onnx.helper.set_model_props(graph, {
        imaging.LABELS_KEY: json.dumps(list(classes)), imaging.PREPROCESS_KEY: json.dumps(spec),
        ARCH_KEY: arch, MODE_KEY: mode,
        imaging.CAM_KEY: json.dumps({"output": imaging.CAM_NAME} if why_not is None else
                                    {"output": None, "why": why_not})})
    write_atomically(path, graph.SerializeToString())


def head_as_conv(head):
    """The head (nn.Linear, or Standardize then nn.Linear: affine either way) as the (weight
    [classes, D, 1, 1], bias [classes]) of a 1x1 convolution computing the same logits.

    Read by probing the head in float64 with 0 and the unit vectors, so Standardize folds into
    the weights and any affine head reads the same way.
    """
    probe = exportable(head).double()
    dim = next(m for m in probe.modules() if isinstance(m, nn.Linear)).in_features
    with torch.no_grad():
        out = probe(torch.cat([torch.zeros(1, dim, dtype=torch.float64), torch.eye(dim, dtype=torch.float64)]))
    bias = out[0]
    weight = (out[1:] - bias).T
    return weight.float().reshape(*weight.shape, 1, 1).numpy(), bias.float().numpy()


def cam_too_costly(model, classes):
    """None when the `cam` Conv's multiply-adds are at most CAM_MAX_COST of the model's (its
    Conv, Gemm and MatMul weights times their outputs' positions); else why it is left out.

    The map costs classes x channels x h x w: nothing for ten classes on a ResNet50 (0.03%),
    too much for hundreds of classes on EfficientNet-B0, whose backbone is small and wide.
    """
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.value_info, *inferred.output, *inferred.input]}
    weights = {i.name: list(i.dims) for i in inferred.initializer}
    total = 0
    for node in inferred.node:
        if node.op_type == "Conv":
            total += math.prod(shapes[node.output[0]][1:]) * math.prod(weights[node.input[1]][1:])
        elif node.op_type in ("Gemm", "MatMul") and node.input[1] in weights:
            total += math.prod(weights[node.input[1]])
    pooled = [node for node in inferred.node if node.op_type == "GlobalAveragePool"][-1]
    cam = classes * math.prod(shapes[pooled.input[0]][1:])
    if cam > CAM_MAX_COST * total:
        return (f"no class activation map: with {classes} classes it would cost {cam / total:.1%} of the model's "
                f"arithmetic on every call, more than the {CAM_MAX_COST:.0%} allowed")
    return None


def add_cam(graph, head, classes):
    """Add output imaging.CAM_NAME to `graph`: the head as a 1x1 convolution over the feature map that its
    last GlobalAveragePool averages (cam_unavailable(backbone) is None: features are that mean).

    One Conv beside the pooling, so the backbone is computed once for both outputs; ONNX Runtime
    runs it on every call, fetched or not, hence cam_too_costly.
    """
    pooled = [node for node in graph.node if node.op_type == "GlobalAveragePool"][-1]
    weight, bias = head_as_conv(head)
    graph.initializer.extend([onnx.numpy_helper.from_array(weight, "cam/weight"),
                              onnx.numpy_helper.from_array(bias, "cam/bias")])
    graph.node.append(onnx.helper.make_node("Conv", [pooled.input[0], "cam/weight", "cam/bias"], [imaging.CAM_NAME],
                                            name="cam/Conv", kernel_shape=[1, 1]))
    graph.output.append(onnx.helper.make_tensor_value_info(imaging.CAM_NAME, onnx.TensorProto.FLOAT,
                                                           ["batch", classes, "height", "width"]))
