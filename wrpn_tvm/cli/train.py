"""`wrpn-tvm train`: train a WRPN zoo model and export it (wrpn_tvm.train.train)."""

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

    given = (("batch_size", args.batch_size), ("lr", args.lr), ("kd_weight", args.kd_weight),
             ("kd_temperature", args.kd_temperature))
    tuning = {name: value for name, value in given if value is not None}
    result = train(args.model, args.width, args.abits, args.wbits, args.dataset, args.epochs, args.output,
                   seed=args.seed, resume=args.resume, progress=True, teacher=args.teacher, init_from=args.init_from,
                   augment_shift=args.augment_shift, warmup_epochs=args.warmup_epochs, val_fraction=args.val_fraction,
                   patience=args.patience, **tuning)
    keys = ("model", "width", "abits", "wbits", "dataset", "test_accuracy", "val_accuracy", "exported_epoch")
    summary = {key: result[key] for key in keys if key in result}
    print(json.dumps({**summary, "output": str(args.output)}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("train", help="train a WRPN model and export it (.pt2 + .json)")
    add_wrpn_arguments(parser)
    parser.add_argument("--dataset", required=True, help="mnist5k, digits, a folder of class folders, or an .npz (x, y)")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("-o", "--output", required=True, help="MODEL.pt2 (writes MODEL.json and MODEL.ckpt/ beside it)")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in MODEL.ckpt/")
    parser.add_argument("--seed", type=int, default=0, help="seeds the split, the init and the shuffling")
    parser.add_argument("--batch-size", type=int, help="(default 64)")
    parser.add_argument("--lr", type=float, help="Adam learning rate, cosine-decayed per epoch (default 0.03)")
    parser.add_argument("--teacher", metavar="MODEL",
                        help="distil from this trained model (.pt2 with its .json, or a checkpoint): Apprentice-style")
    parser.add_argument("--kd-weight", type=float, help="weight of the distillation term, 0..1 (default 0.5)")
    parser.add_argument("--kd-temperature", type=float, help="softmax temperature of distillation (default 4)")
    parser.add_argument("--init-from", metavar="MODEL",
                        help="start from this trained model's weights (.pt2 or checkpoint; same or narrower width, "
                             "widened by copying filters)")
    parser.add_argument("--augment-shift", type=int, default=0, metavar="PIXELS",
                        help="shift training images randomly by up to this many pixels (default 0: off)")
    parser.add_argument("--warmup-epochs", type=int, default=0, help="linear learning-rate warm-up (default 0: off)")
    parser.add_argument("--val-fraction", type=float, default=0.0,
                        help="hold out this part of the training split; export the best epoch on it (default 0: off)")
    parser.add_argument("--patience", type=int,
                        help="stop after this many epochs without a better validation accuracy (needs --val-fraction)")
    parser.set_defaults(func=handle)
