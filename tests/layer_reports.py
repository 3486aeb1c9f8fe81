"""Reading compile results in tests: what each layer was recognized as, apart from the kernel that runs it."""


def recognized(layers) -> list[str]:
    """Per conv/dense layer "conv2d a2/w2" (a quantized layer, bit-serial or int8-dot alike) or "fp32"."""
    return [layer.lowered_to.split(" ", 1)[-1] for layer in layers]
