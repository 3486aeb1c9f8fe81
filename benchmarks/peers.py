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
All at THREADS threads, batch 1, 224x224; timing is end_to_end.py's (`_timed`), the same for every row.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

from end_to_end import IMAGE, THREADS, _peak_mib, _rss_mib, _timed

CALIBRATION_SAMPLES = 16


def _input(shape=(1, 3, IMAGE, IMAGE)):
    return np.random.default_rng(0).random(shape, dtype=np.float32)


def prepare_onnx(program: Path, folder: Path) -> dict:
    import onnxruntime
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder.mkdir(parents=True, exist_ok=True)
    fp32, prepared, int8 = folder / "model.onnx", folder / "model-prepared.onnx", folder / "model-int8.onnx"
    exported = torch.export.load(str(program))
    torch.onnx.export(exported, (torch.from_numpy(_input()),), str(fp32), dynamo=True, optimize=True)
    name = onnxruntime.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class RandomImages(CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(1)
            self.batches = iter([{name: rng.random((1, 3, IMAGE, IMAGE), dtype=np.float32)}
                                 for _ in range(CALIBRATION_SAMPLES)])

        def get_next(self):
            return next(self.batches, None)

    quant_pre_process(str(fp32), str(prepared))  # shape inference + graph optimization, as ORT's recipe asks
    quantize_static(str(prepared), str(int8), RandomImages(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    return {"fp32": str(fp32), "int8": str(int8), "torch": torch.__version__}


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


def _versions(*modules) -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in modules}


def time_peer(peer: str, model: str, repeat: int) -> dict:
    base = _rss_mib()
    if peer in ("ort-fp32", "ort-int8"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = THREADS
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: _input()}
        runs = _timed(lambda: session.run(None, feed), repeat)
        settings = {"intra_op_num_threads": THREADS, "provider": "CPUExecutionProvider"}
        versions = _versions("onnxruntime", "onnx")
    elif peer == "openvino":
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY"})
        request = compiled.create_infer_request()
        x = _input()
        runs = _timed(lambda: request.infer([x]), repeat)
        settings = {"INFERENCE_NUM_THREADS": THREADS, "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": compiled.get_property("INFERENCE_PRECISION_HINT").to_string()}
        versions = _versions("openvino")
    elif peer == "lce":
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        # LCE's x86 build is tuned for ARM; its indirect BGEMM kernels are the fast ones here (2.5x).
        interpreter = Interpreter(Path(model).read_bytes(), num_threads=THREADS, use_indirect_bgemm=True)
        x = _input((1, IMAGE, IMAGE, 3))
        runs = _timed(lambda: interpreter.predict(x), repeat)
        settings = {"num_threads": THREADS, "use_indirect_bgemm": True, "network": "larq_zoo QuickNet, random weights"}
        versions = _versions("larq-compute-engine", "larq-zoo", "larq", "tensorflow-cpu")
    else:
        raise SystemExit(f"unknown peer {peer}")
    return {"runs_ms": runs, "peak_rss_mib": _peak_mib(), "rss_after_imports_mib": base,
            "versions": versions, "settings": settings}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    onnx = sub.add_parser("prepare-onnx")
    onnx.add_argument("program", type=Path)
    onnx.add_argument("folder", type=Path)
    sub.add_parser("prepare-lce").add_argument("folder", type=Path)
    timing = sub.add_parser("time")
    timing.add_argument("peer", choices=["ort-fp32", "ort-int8", "openvino", "lce"])
    timing.add_argument("model")
    timing.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    if args.command == "prepare-onnx":
        result = prepare_onnx(args.program, args.folder)
    elif args.command == "prepare-lce":
        result = prepare_lce(args.folder)
    else:
        result = time_peer(args.peer, args.model, args.repeat)
    sys.stdout.flush()
    print(json.dumps(result))


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
