"""CIFAR ResNets with a `depth` knob, and model statistics.

For `depth = 6n + 2` `build_resnet` is exactly the CIFAR-10 ResNet of He et
al. (2016), section 4.2: a 3x3 stem convolution with `width` filters, three
stages of `n` basic blocks with `width`, `2 * width` and `4 * width` filters
(the first block of stages 2 and 3 halves the resolution with stride 2), the
parameter-free "option A" shortcut (subsample and zero-pad the channels),
global average pooling and one dense layer. ResNet-20 has 0.27 M parameters,
ResNet-32 0.46 M, ResNet-56 0.85 M.

Other depths follow one rule. `depth` counts the weighted layers: the stem,
two per basic block, and the dense head. So `B = (depth - 2) // 2` blocks
are spread over the three stages as evenly as possible, earlier stages
taking the remainder, and an odd depth adds one 3x3 convolution (with batch
norm and ReLU) after the last stage. Depth 30 is stages of 5, 5, 4 blocks;
depth 15 is 2, 2, 2 blocks plus the extra convolution. The smallest depth is
8 (one block per stage).

The models take raw pixels (float, 0..255) and normalise them with fixed
CIFAR-10 statistics inside the model, so a saved model needs no
preprocessing code to be used. They return logits (no softmax).
"""

import keras

from kd_keras.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, IMAGE_SHAPE, NUM_CLASSES
from kd_keras.models.depth import stage_blocks
from kd_keras.models.fused_batch_norm import FusedBatchNormalization


def _conv_bn_relu(
    x, filters, strides, weight_decay, name, relu=True, fused=True, synchronized=False
):
    x = keras.layers.Conv2D(
        filters,
        3,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=(keras.regularizers.L2(weight_decay) if weight_decay else None),
        name=f"{name}_conv",
    )(x)
    # Momentum 0.9 (PyTorch's 0.1): with few steps per epoch, Keras's default
    # 0.99 lets the moving statistics lag the weights for several epochs.
    if synchronized:
        # Statistics of the global batch under tf.distribute (no fused kernel).
        x = keras.layers.BatchNormalization(momentum=0.9, synchronized=True, name=f"{name}_bn")(x)
    else:
        batch_norm = FusedBatchNormalization if fused else keras.layers.BatchNormalization
        x = batch_norm(momentum=0.9, name=f"{name}_bn")(x)
    if relu:
        x = keras.layers.ReLU(name=f"{name}_relu")(x)
    return x


def _shortcut_option_a(x, filters, name):
    """He et al.'s parameter-free shortcut: subsample, zero-pad channels.

    Built from stock layers only, so saved models load in Keras's safe mode
    without any kd_keras code.
    """
    x = keras.layers.MaxPooling2D(pool_size=1, strides=2, name=f"{name}_subsample")(x)
    height, width, channels = x.shape[1:]  # ceil(side / 2), as the strided conv.
    pad = filters - channels
    x = keras.layers.Reshape((height, width, channels, 1), name=f"{name}_r1")(x)
    x = keras.layers.ZeroPadding3D(
        ((0, 0), (0, 0), (pad // 2, pad - pad // 2)), name=f"{name}_pad"
    )(x)
    return keras.layers.Reshape((height, width, filters), name=f"{name}_r2")(x)


def _basic_block(x, filters, strides, weight_decay, name, fused, synchronized=False):
    shortcut = x
    y = _conv_bn_relu(
        x, filters, strides, weight_decay, f"{name}_a", fused=fused, synchronized=synchronized
    )
    y = _conv_bn_relu(
        y, filters, 1, weight_decay, f"{name}_b", relu=False, fused=fused, synchronized=synchronized
    )
    if strides != 1 or x.shape[-1] != filters:
        shortcut = _shortcut_option_a(x, filters, f"{name}_short")
    y = keras.layers.Add(name=f"{name}_add")([y, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(y)


def build_resnet(
    depth,
    *,
    width=16,
    num_classes=NUM_CLASSES,
    weight_decay=0.0,
    fused_batch_norm=True,
    synchronized_batch_norm=False,
    name=None,
    input_shape=IMAGE_SHAPE,
):
    """Builds a CIFAR ResNet that maps raw pixels to logits.

    Args:
        depth: number of weighted layers (see the module docstring for the
            rule); `6n + 2` gives He et al.'s ResNet-20/32/44/56/110.
        width: filters of the first stage (16 in the paper); stages 2 and 3
            use twice and four times as many.
        num_classes: size of the logits.
        weight_decay: L2 factor on the convolution and dense kernels, or 0
            to leave regularisation to the optimizer.
        fused_batch_norm: True (default) builds the batch norms as
            `FusedBatchNormalization` (TensorFlow's fused kernel: same
            weights and results, faster training); False uses stock
            `keras.layers.BatchNormalization`. `with_keras_batch_norm`
            converts a trained model to stock layers for shipping.
        synchronized_batch_norm: True builds stock `BatchNormalization(
            synchronized=True)` layers (overriding `fused_batch_norm`): under
            a `tf.distribute` strategy they normalise with the statistics of
            the global batch, not each replica's part; on one device they
            compute what the other layers do.
        name: model name; defaults to `"resnet{depth}"` (with the width if
            it is not 16).
        input_shape: `(height, width, 3)` of the images (default CIFAR's
            32x32); the model pools globally, so any size of at least 8 works.

    Returns:
        A functional `keras.Model` taking float images of shape
        `(32, 32, 3)` in 0..255 and returning `(batch, num_classes)` logits.

    Raises:
        ValueError: for a depth below 8, a non-int depth, or a width or
            class count below 1.

    Example:

    >>> model = build_resnet(20)
    >>> model.count_params()
    271098
    """
    blocks, extra_conv = stage_blocks(depth)
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    if name is None:
        name = f"resnet{depth}" + ("" if width == 16 else f"_w{width}")

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    # --- Fixed normalisation: the model takes raw 0..255 pixels. ---
    x = keras.layers.Normalization(
        mean=list(CIFAR10_MEAN),
        variance=[s * s for s in CIFAR10_STD],
        name="normalize",
    )(inputs)
    # --- Stem. ---
    sync = synchronized_batch_norm
    x = _conv_bn_relu(x, width, 1, weight_decay, "stem", fused=fused_batch_norm, synchronized=sync)
    # --- Three stages of basic blocks. ---
    for stage, count in enumerate(blocks):
        filters = width * 2**stage
        for block in range(count):
            strides = 2 if stage > 0 and block == 0 else 1
            x = _basic_block(
                x,
                filters,
                strides,
                weight_decay,
                f"s{stage + 1}b{block + 1}",
                fused_batch_norm,
                synchronized=sync,
            )
    if extra_conv:
        x = _conv_bn_relu(
            x, x.shape[-1], 1, weight_decay, "extra", fused=fused_batch_norm, synchronized=sync
        )
    # --- Head: logits, no softmax. ---
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        num_classes,
        kernel_initializer="he_normal",
        kernel_regularizer=(keras.regularizers.L2(weight_decay) if weight_decay else None),
        name="logits",
        dtype="float32",  # Logits stay float32 under mixed precision.
    )(x)
    return keras.Model(inputs, outputs, name=name)


def count_flops(model):
    """Multiply-accumulate based FLOPs of one forward pass on one image.

    Counts 2 FLOPs per multiply-accumulate in `Conv2D` and `Dense` layers
    (the convention of the ResNet paper's FLOP figures times two); batch
    norm, ReLU, pooling and additions are not counted.

    Args:
        model: a built functional model.

    Returns:
        An int.
    """
    flops = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel_h, kernel_w = layer.kernel_size
            out_h, out_w, out_c = layer.output.shape[1:]
            flops += 2 * out_h * out_w * out_c * kernel_h * kernel_w
        elif isinstance(layer, keras.layers.Conv2D):
            kernel_h, kernel_w = layer.kernel_size
            in_channels = layer.input.shape[-1]
            out_h, out_w, out_c = layer.output.shape[1:]
            flops += 2 * out_h * out_w * out_c * kernel_h * kernel_w * in_channels
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.input.shape[-1] * layer.units
    return int(flops)


def _all_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
        else:
            yield layer
