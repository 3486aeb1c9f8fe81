"""What a user would deploy instead of wrpn-tvm on a CPU, timed for benchmarks/end_to_end.py.

Runs inside the peers' own venvs (benchmarks/peers_env.sh), never in the project's: nothing in
wrpn_tvm imports these libraries. Each call does one thing and prints one JSON line.

  prepare-onnx PROGRAM.pt2 DIR  (ort venv) the FP32 ResNet-18 program -> DIR/model.onnx (torch's
                                ONNX exporter) and DIR/model-int8.onnx (ONNX Runtime static
                                quantization: QDQ, per-channel S8 weights, U8 activations,
                                calibrated on random inputs)
  prepare-lce DIR               (lce venv) larq_zoo's binary QuickNet (random weights: no download)
                                -> DIR/quicknet.tflite (lce.convert_keras_model)
  time PEER MODEL               one peer's latencies: runs_ms, versions, settings
      ort-fp32 / ort-int8       ONNX Runtime CPU provider
      openvino                  OpenVINO CPU plugin, default precision (it picks bf16 where the CPU has it)
      lce                       Larq Compute Engine interpreter with its indirect BGEMM kernels
For benchmarks/kernels.py, the same per ResNet-18 3x3 conv layer (its LAYERS, 1x width, batch 1):
  prepare-layers DIR            (ort venv) one Conv2d per layer -> ONNX FP32 and static int8, as above
  prepare-lce-layers DIR        (lce venv) one larq QuantConv2D per layer, binary input and weights
                                (ste_sign, one-padding as in QuickNet) -> .tflite
  time-layers PEER MODELS.json  every layer's latencies in one process
Batch 1, --threads threads (THREADS by default); timing is end_to_end.py's (`_timed`), the same for
every row.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from end_to_end import IMAGE, THREADS, _peak_mib, _rss_mib, _timed
from kernels import LAYERS

CALIBRATION_SAMPLES = 16


def _input(shape=(1, 3, IMAGE, IMAGE)):
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def _export_onnx(exported, shape, folder: Path, stem: str) -> dict:
    """`exported` (torch.export program or nn.Module) -> FP32 ONNX and its static int8 QDQ quantization."""
    import onnxruntime
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder.mkdir(parents=True, exist_ok=True)
    fp32, prepared, int8 = folder / f"{stem}.onnx", folder / f"{stem}-prepared.onnx", folder / f"{stem}-int8.onnx"
    torch.onnx.export(exported, (torch.from_numpy(_input(shape)),), str(fp32), dynamo=True, optimize=True)
    name = onnxruntime.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class RandomInputs(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{name: rng.random(shape, dtype=np.float32)} for _ in range(CALIBRATION_SAMPLES)])

        def get_next(self):
            return next(self.batches, None)

    quant_pre_process(str(fp32), str(prepared))  # shape inference + graph optimization, as ORT's recipe asks
    quantize_static(str(prepared), str(int8), RandomInputs(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"fp32": str(fp32), "int8": str(int8)}


def prepare_onnx(program: Path, folder: Path) -> dict:
    import torch

    exported = torch.export.load(str(program))
    return {**_export_onnx(exported, (1, 3, IMAGE, IMAGE), folder, "model"), "torch": torch.__version__}


def prepare_layers(folder: Path) -> dict:
    import torch

    torch.manual_seed(0)
    models = {}
    for size, channels in LAYERS:
        conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).eval()
        models[f"{size}x{size}x{channels}"] = _export_onnx(conv, (1, channels, size, size), folder,
                                                           f"conv{size}x{channels}")
    return models


def prepare_lce(folder: Path) -> dict:
    import larq_compute_engine as lce
    import larq_zoo
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    model = larq_zoo.sota.QuickNet(input_shape=(IMAGE, IMAGE, 3), weights=None)
    path = folder / "quicknet.tflite"
    path.write_bytes(lce.convert_keras_model(model))
    return {"lce": str(path)}


def prepare_lce_layers(folder: Path) -> dict:
    import larq
    import larq_compute_engine as lce
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    tf.keras.utils.set_random_seed(0)
    models = {}
    for size, channels in LAYERS:
        inputs = tf.keras.Input((size, size, channels), batch_size=1)
        outputs = larq.layers.QuantConv2D(channels, 3, padding="same", pad_values=1.0, use_bias=False,
                                          input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                                          kernel_constraint="weight_clip")(inputs)
        path = folder / f"bconv{size}x{channels}.tflite"
        path.write_bytes(lce.convert_keras_model(tf.keras.Model(inputs, outputs)))
        models[f"{size}x{size}x{channels}"] = {"lce": str(path)}
    return models


def _versions(*modules) -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in modules}


def _runner(peer: str, model: str, threads: int):
    """(run once, settings, versions) for `model` under `peer`, on a random input of the model's shape."""
    if peer in ("ort-fp32", "ort-int8"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: _input(tuple(session.get_inputs()[0].shape))}
        return (lambda: session.run(None, feed), {"intra_op_num_threads": threads, "provider": "CPUExecutionProvider"},
                _versions("onnxruntime", "onnx"))
    if peer == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                          "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        x = _input(tuple(compiled.input(0).get_shape()))
        return (lambda: request.infer([x]),
                {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                 "INFERENCE_PRECISION_HINT": compiled.get_property("INFERENCE_PRECISION_HINT").to_string()},
                _versions("openvino"))
    if peer == "lce":
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        # LCE's x86 build is tuned for ARM; its indirect BGEMM kernels are the fast ones here (2.5x).
        interpreter = Interpreter(Path(model).read_bytes(), num_threads=threads, use_indirect_bgemm=True)
        x = _input(tuple(interpreter.input_shapes[0]))
        return (lambda: interpreter.predict(x), {"num_threads": threads, "use_indirect_bgemm": True},
                _versions("larq-compute-engine", "larq-zoo", "larq", "tensorflow-cpu"))
    raise SystemExit(f"unknown peer {peer}")


def time_peer(peer: str, model: str, repeat: int, threads: int) -> dict:
    base = _rss_mib()
    run_once, settings, versions = _runner(peer, model, threads)
    runs = _timed(run_once, repeat)
    return {"runs_ms": runs, "peak_rss_mib": _peak_mib(), "rss_after_imports_mib": base,
            "versions": versions, "settings": settings}


def time_layers(peer: str, models: dict, repeat: int, threads: int) -> dict:
    """layer -> runs_ms for every layer's model of `peer` (its key in prepare-*'s map), plus settings."""
    which = {"ort-fp32": "fp32", "ort-int8": "int8", "openvino": "fp32", "lce": "lce"}[peer]
    result = {"runs_ms": {}}
    for layer, paths in models.items():
        run_once, result["settings"], result["versions"] = _runner(peer, paths[which], threads)
        result["runs_ms"][layer] = _timed(run_once, repeat)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    onnx = sub.add_parser("prepare-onnx")
    onnx.add_argument("program", type=Path)
    onnx.add_argument("folder", type=Path)
    sub.add_parser("prepare-lce").add_argument("folder", type=Path)
    sub.add_parser("prepare-layers").add_argument("folder", type=Path)
    sub.add_parser("prepare-lce-layers").add_argument("folder", type=Path)
    for command in ("time", "time-layers"):
        timing = sub.add_parser(command)
        timing.add_argument("peer", choices=["ort-fp32", "ort-int8", "openvino", "lce"])
        timing.add_argument("model", help="a model file (time) or a JSON map from prepare-*layers (time-layers)")
        timing.add_argument("--repeat", type=int, default=30)
        timing.add_argument("--threads", type=int, default=THREADS)
    args = parser.parse_args()
    if args.command == "prepare-onnx":
        result = prepare_onnx(args.program, args.folder)
    elif args.command == "prepare-lce":
        result = prepare_lce(args.folder)
    elif args.command == "prepare-layers":
        result = prepare_layers(args.folder)
    elif args.command == "prepare-lce-layers":
        result = prepare_lce_layers(args.folder)
    elif args.command == "time":
        result = time_peer(args.peer, args.model, args.repeat, args.threads)
    else:
        result = time_layers(args.peer, json.loads(Path(args.model).read_text()), args.repeat, args.threads)
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
