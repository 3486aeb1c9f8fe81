"""`wrpn-tvm export`: export a zoo model (random or from a checkpoint) as a frozen .pt2 (wrpn_tvm.nn.program.export)."""

import json

from .train import add_wrpn_arguments


def handle(args) -> int:
    from ..nn import export

    metadata = export(args.model, args.width, args.abits, args.wbits, args.output, checkpoint=args.checkpoint,
                      image_size=args.image_size, in_channels=args.in_channels, num_classes=args.num_classes,
                      seed=args.seed)
    print(json.dumps({**metadata, "output": str(args.output)}))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("export", help="export a zoo model as a frozen torch.export program (.pt2 + .json)")
    add_wrpn_arguments(parser)
    parser.add_argument("--checkpoint", help="a training checkpoint (MODEL.ckpt/epoch-NNNN.pt); random init without it")
    parser.add_argument("--image-size", type=int, help="input height = width (default: the model's natural size)")
    parser.add_argument("--in-channels", type=int, help="input channels (default 1)")
    parser.add_argument("--num-classes", type=int, help="classifier outputs (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seeds the random init")
    parser.add_argument("-o", "--output", required=True, help="MODEL.pt2 (writes MODEL.json beside it)")
    parser.set_defaults(func=handle)
