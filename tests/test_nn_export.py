"""The frozen export contract the compiler pattern-matches (wrpn_tvm.nn.program docstring)."""

import json

import pytest
import torch

from wrpn_tvm.nn import build_model, export, export_model

aten = torch.ops.aten


def _producers(node, length):
    """The `length` nodes feeding `node` through their first argument, nearest first."""
    chain = []
    for _ in range(length):
        node = node.args[0]
        chain.append(node)
    return chain


def _weights(program):
    """(conv/linear node, its weight tensor) in graph order."""
    params = {**program.state_dict, **program.constants}
    signature = {spec.arg.name: spec.target for spec in program.graph_signature.input_specs}
    return [(node, params[signature[node.args[1].name]]) for node in program.graph.nodes
            if node.target in (aten.conv2d.default, aten.linear.default)]


@pytest.mark.parametrize("name,size,abits,wbits", [
    ("smallcnn", 28, 4, 2), ("smallcnn", 28, 2, 3), ("smallcnn", 28, 1, 1), ("smallcnn", 28, 3, 8),
    ("resnet18", 32, 2, 2), ("resnet18", 32, 1, 1),
])
def test_spelling_and_frozen_weights(name, size, abits, wbits):
    torch.manual_seed(0)
    model = build_model(name, width=0.25, abits=abits, wbits=wbits, image_size=size)
    program = export_model(model, torch.rand(1, 1, size, size))
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert not any("autograd" in str(t) or "higher_order" in str(t) or "detach" in str(t) for t in targets)
    assert aten.batch_norm.default in targets or aten._native_batch_norm_legit_no_training.default in targets

    weights = _weights(program)
    n_act, n_weight = 2**abits - 1, 2 ** (wbits - 1) - 1
    act_spelling = [aten.round.default, aten.clamp.default] if abits == 1 else \
        [aten.div.Tensor, aten.round.default, aten.mul.Tensor, aten.clamp.default]
    for index, (node, weight) in enumerate(weights):
        if index in (0, len(weights) - 1):
            continue  # full-precision first and last layers
        # input: clamp(x, 0, 1) -> mul (2^k - 1) -> round -> div (2^k - 1)
        chain = _producers(node, len(act_spelling))
        assert [producer.target for producer in chain] == act_spelling, (node, chain)
        assert chain[-1].args[1:] == (0.0, 1.0)
        if abits > 1:
            assert chain[0].args[1] == n_act and chain[2].args[1] == n_act
        # weight: on the grid
        if wbits == 1:
            for channel in weight:
                values = torch.unique(channel)
                assert len(values) == 2 and torch.allclose(values[0], -values[1]) and values[1] > 0
        else:
            levels = weight * n_weight
            assert torch.allclose(levels, torch.round(levels), atol=1e-5)
            assert levels.abs().max() <= n_weight + 1e-5


def test_exported_program_matches_the_eval_model():
    torch.manual_seed(0)
    model = build_model("resnet18", width=0.25, abits=2, wbits=2, image_size=32)
    model.train()(torch.rand(8, 1, 32, 32))  # move the batch-norm running statistics off their init
    x = torch.rand(1, 1, 32, 32)
    program = export_model(model, x)
    assert model.training  # export works on a copy
    assert torch.allclose(program.module()(x), model.eval()(x), atol=1e-5)


def test_export_writes_program_and_sidecar(tmp_path):
    metadata = export("smallcnn", 2, 4, 2, tmp_path / "m.pt2", image_size=12, in_channels=3, num_classes=5)
    sidecar = json.loads((tmp_path / "m.json").read_text())
    assert sidecar == metadata
    assert sidecar["input_shape"] == [1, 3, 12, 12] and (sidecar["abits"], sidecar["wbits"]) == (4, 2)
    assert sidecar["trained"] is False
    assert torch.export.load(str(tmp_path / "m.pt2")).module()(torch.rand(1, 3, 12, 12)).shape == (1, 5)
