"""`wrpn-tvm train`: train a WRPN zoo model from scratch and export it (wrpn_tvm.train.train)."""

import json


def add_wrpn_arguments(parser) -> None:
    """The model/width/bits options shared by `train` and `export`."""
    parser.add_argument("--model", required=True,
                        help="zoo model: smallcnn, resnet18, resnet34 or alexnet (wrpn_tvm.nn.MODEL_NAMES)")
    parser.add_argument("--width", type=float, default=1.0, help="width multiplier (default 1)")
    parser.add_argument("--abits", type=int, default=32, help="activation bits, 1..8 or 32 (default 32)")
    parser.add_argument("--wbits", type=int, default=32, help="weight bits, 1..8 or 32 (default 32)")


def handle(args) -> int:
    from ..train import train

    tuning = {name: value for name, value in (("batch_size", args.batch_size), ("lr", args.lr)) if value is not None}
    result = train(args.model, args.width, args.abits, args.wbits, args.dataset, args.epochs, args.output,
                   seed=args.seed, resume=args.resume, progress=True, **tuning)
    summary = {key: result[key] for key in ("model", "width", "abits", "wbits", "dataset", "test_accuracy")}
    print(json.dumps({**summary, "output": str(args.output)}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a WRPN model from scratch and export it (.pt2 + .json)")
    add_wrpn_arguments(parser)
    parser.add_argument("--dataset", required=True, help="mnist5k, digits, a folder of class folders, or an .npz (x, y)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("-o", "--output", required=True, help="MODEL.pt2 (writes MODEL.json and MODEL.ckpt/ beside it)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in MODEL.ckpt/")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the shuffling")
    parser.add_argument("--batch-size", type=int, help="(default 64)")
    parser.add_argument("--lr", type=float, help="Adam learning rate, cosine-decayed per epoch (default 0.03)")
    parser.set_defaults(func=handle)
