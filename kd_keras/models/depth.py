"""The depth rule of kd_keras's CIFAR ResNets, free of Keras imports.

`depth` counts the weighted layers: the stem, two per basic block, and the
dense head. `B = (depth - 2) // 2` blocks are spread over the three stages
as evenly as possible (earlier stages take the remainder), and an odd depth
adds one 3x3 convolution after the last stage.

Depths run from `MIN_DEPTH` to `MAX_DEPTH`. The upper limit comes from how
Keras builds a functional model: `keras.Model(inputs, outputs)` walks the
layer graph recursively (`keras.src.ops.function._build_map_helper`), about
seven Python frames per residual block. With Python's default recursion
limit of 1000, depth 260 (129 blocks) built and depth 320 raised
`RecursionError`; depth 200 (99 blocks) was built, trained, distilled,
saved and reloaded with the limit at 1000, leaving about 200 frames for the
caller. (Importing Keras often raises the limit to 3000 as a side effect,
through `jedi`; kd_keras does not count on it.) He et al.'s ResNet-110 is
within the limit; their ResNet-1202 is not.
"""

MIN_DEPTH = 8
MAX_DEPTH = 200


def stage_blocks(depth):
    """The number of basic blocks per stage, and whether an extra conv is added.

    Args:
        depth: the number of weighted layers, an int in
            [`MIN_DEPTH`, `MAX_DEPTH`] = [8, 200].

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
    if depth > MAX_DEPTH:
        raise ValueError(
            f"depth must be at most {MAX_DEPTH} (deeper functional models exceed "
            f"Python's recursion limit while Keras builds them), got {depth}; "
            "ResNet-110 (depth 110) is the deepest of the usual CIFAR models"
        )
    total = (depth - 2) // 2
    blocks = tuple(total // 3 + (1 if stage < total % 3 else 0) for stage in range(3))
    return blocks, (depth - 2) % 2 == 1
