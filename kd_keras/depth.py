"""The depth rule of kd_keras's CIFAR ResNets, free of Keras imports.

`depth` counts the weighted layers: the stem, two per basic block, and the
dense head. `B = (depth - 2) // 2` blocks are spread over the three stages
as evenly as possible (earlier stages take the remainder), and an odd depth
adds one 3x3 convolution after the last stage.
"""

MIN_DEPTH = 8


def stage_blocks(depth):
    """The number of basic blocks per stage, and whether an extra conv is added.

    Args:
        depth: the number of weighted layers, an int >= 8.

    Returns:
        `(blocks, extra_conv)`: a tuple of three block counts and a bool.

    Raises:
        ValueError: if `depth` cannot be built.
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < MIN_DEPTH:
        raise ValueError(
            f"depth must be an int >= {MIN_DEPTH} (depth = 6n+2 gives He et "
            f"al.'s ResNet-20/32/44/56/110; any other int >= {MIN_DEPTH} "
            f"works too, e.g. 15 or 30), got {depth!r}"
        )
    total = (depth - 2) // 2
    blocks = tuple(total // 3 + (1 if stage < total % 3 else 0) for stage in range(3))
    return blocks, (depth - 2) % 2 == 1
