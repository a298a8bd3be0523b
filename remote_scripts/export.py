"""ONNX export of a trained classifier, self-describing through its metadata (torch >= 1.13).

The file holds input `image` (float32 [batch, 3, H, W], batch axis dynamic), output
`probabilities` (softmax applied), and in metadata_props the label names, the preprocessing
(imaging.preprocess_spec) and the architecture and mode, so the file alone is enough to predict.
"""
import copy
import inspect
import json
import warnings

import onnx
import torch
import torch.nn as nn

try:  # imported as remote_scripts.export (tests)
    from . import imaging
    from .atomic import write_atomically
except ImportError:  # beside train.py, started as a script
    import imaging
    from atomic import write_atomically

# The newest opset torch 1.13's exporter writes; ONNX Runtime >= 1.13 runs it.
ONNX_OPSET = 17
ARCH_KEY = "orchestrate.arch"
MODE_KEY = "orchestrate.mode"


class Probabilities(nn.Module):
    """What is exported: class probabilities, so the ONNX output needs no post-processing."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        return torch.softmax(self.model(image), dim=1)


def export_onnx(model, path, classes, spec, arch, mode):
    """Write softmax(model) to `path` as ONNX with a dynamic batch axis and our metadata.

    Exports a float32 CPU copy in eval mode, so the trained model (maybe on a GPU, channels_last,
    and put back into train mode by the exporter) is left as it was.
    """
    exportable = Probabilities(copy.deepcopy(model)).cpu().float().eval()
    exportable = exportable.to(memory_format=torch.contiguous_format)
    height, width = spec["size"]
    example = torch.zeros(2, 3, height, width)  # batch 2: an exporter may specialize a batch of 1
    kwargs = dict(input_names=[imaging.INPUT_NAME], output_names=[imaging.OUTPUT_NAME],
                  dynamic_axes={imaging.INPUT_NAME: {0: "batch"}, imaging.OUTPUT_NAME: {0: "batch"}},
                  opset_version=ONNX_OPSET, do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        # torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript; the TorchScript
        # exporter needs nothing more and behaves the same from torch 1.13 on.
        kwargs["dynamo"] = False
    metadata = {imaging.LABELS_KEY: json.dumps(list(classes)), imaging.PREPROCESS_KEY: json.dumps(spec),
                ARCH_KEY: arch, MODE_KEY: mode}

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(exportable, (example,), tmp, **kwargs)
        exported = onnx.load(tmp)
        onnx.helper.set_model_props(exported, metadata)
        onnx.save(exported, tmp)

    write_atomically(path, write)
