"""The output layer on the CPU: the vocabulary projection through oneDNN rather than MKL.

Each decoding step ends with the largest matrix product of a small model: the
hidden states times the output layer (SmolLM2: 49,152 x 576 in float32, the
same tensor as the input embeddings). torch sends a float32 linear layer to
MKL, which on this project's AMD CPU takes 7.4 ms for one row and 12.5 ms for
eight: more than a third of an 8-row step. oneDNN's kernel for the same float32
weight (``mkldnn::_linear_pointwise``, the one torch.compile's CPU backend
emits) takes 2.7 and 5.5 ms, still float32 throughout (results differ from
MKL's only in summation order, about 1e-6 relative), with no copy of the weight,
so the tie to the embeddings and the footprint stay as they were.

Inference only: the op has no gradient, so with autograd on (training) the layer
is an ordinary ``nn.Linear``.
"""

from __future__ import annotations

import torch
from torch import nn


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose inference passes run oneDNN's float32 kernel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return super().forward(x)
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def onednn_usable() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def use_onednn_output_layer(model: nn.Module) -> bool:
    """Run a float32 CPU output layer through oneDNN, sharing its weight; False where that does not apply."""
    head = model.get_output_embeddings()
    if type(head) is not nn.Linear or head.weight.device.type != "cpu" or head.weight.dtype != torch.float32:
        return False
    if not onednn_usable():
        return False
    with torch.device("meta"):  # no second 49k x 576 allocation: the parameters are the head's own
        layer = OneDNNLinear(head.in_features, head.out_features, bias=head.bias is not None)
    layer.weight, layer.bias = head.weight, head.bias
    model.set_output_embeddings(layer)
    return True
