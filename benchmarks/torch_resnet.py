"""A hand-written PyTorch distillation loop, the reference the Keras step is
measured against (`python -m benchmarks.throughput --torch`).

The same CIFAR ResNet as `kd_keras.build_resnet` (fixed input
normalisation, 3x3 stem, three stages of basic blocks, parameter-free
option-A shortcut, an extra conv for odd depths, global average pooling,
a dense head), the same depth rule, the same step: SGD with Nesterov
momentum and weight decay, cross-entropy on the hard labels plus
T**2 * KL(teacher || student) at temperature T, the teacher in `eval()`
under `torch.no_grad()`.

Each variant runs at one precision, as kd_keras's precisions do: float32;
bfloat16 (`torch.autocast("cpu", dtype=torch.bfloat16)` around both forward
passes, like `mixed_bfloat16` with a bfloat16 teacher); float16 (CUDA
autocast with a `GradScaler`, like `mixed_float16`; GPUs only). Under
autocast the logits are cast to float32 and the softmax and losses computed
in float32 outside it, as kd_keras computes them.

PyTorch is a benchmark-only dependency (`requirements-bench.txt`); this
module imports it only inside its functions, so it can be imported without
it. The depth rule and the normalisation constants are kd_keras's own
(Keras-free modules).
"""

from kd_keras.data.cifar10 import CIFAR10_MEAN as MEAN
from kd_keras.data.cifar10 import CIFAR10_STD as STD
from kd_keras.models.depth import stage_blocks  # Keras-free: the same depth rule.

# precision: "float32", "bfloat16" (CPU autocast) or "float16" (CUDA
# autocast); device: "cpu" or "cuda".
VARIANTS = {
    "torch_nchw": {"channels_last": False, "compile": False},
    "torch_channels_last": {"channels_last": True, "compile": False},
    "torch_channels_last_compile": {"channels_last": True, "compile": True},
    "torch_channels_last_bf16": {"channels_last": True, "compile": False, "precision": "bfloat16"},
    "torch_channels_last_compile_bf16": {
        "channels_last": True,
        "compile": True,
        "precision": "bfloat16",
    },
    "torch_channels_last_fp16": {
        "channels_last": True,
        "compile": False,
        "precision": "float16",
        "device": "cuda",
    },
    "torch_channels_last_compile_fp16": {
        "channels_last": True,
        "compile": True,
        "precision": "float16",
        "device": "cuda",
    },
}
VARIANT_DEFAULTS = {"precision": "float32", "device": "cpu"}


def variant_options(variant):
    """The options of `variant` with the defaults filled in."""
    return {**VARIANT_DEFAULTS, **VARIANTS[variant]}


def unavailable_reason(variant):
    """Why `variant` cannot run here (a CUDA variant without CUDA), or None."""
    import torch

    if variant_options(variant)["device"] == "cuda" and not torch.cuda.is_available():
        return "needs a CUDA GPU (float16 autocast is a GPU precision); no CUDA device here"
    return None


def build_resnet(depth, width=16, num_classes=10):
    """The CIFAR ResNet of `kd_keras.build_resnet`, as a `torch.nn.Module`
    taking NCHW float images in 0..255."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    def conv_bn(in_channels, out_channels, stride):
        return nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=0.1),  # Keras's 0.9.
        )

    class BasicBlock(nn.Module):
        def __init__(self, in_channels, out_channels, stride):
            super().__init__()
            self.a = conv_bn(in_channels, out_channels, stride)
            self.b = conv_bn(out_channels, out_channels, 1)
            self.pad = out_channels - in_channels
            self.subsample = stride != 1

        def forward(self, x):
            y = self.b(F.relu(self.a(x)))
            shortcut = x
            if self.subsample:
                shortcut = shortcut[:, :, ::2, ::2]
            if self.pad:
                shortcut = F.pad(shortcut, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
            return F.relu(y + shortcut)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            blocks, extra = stage_blocks(depth)
            self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
            self.stem = conv_bn(3, width, 1)
            layers, channels = [], width
            for stage, count in enumerate(blocks):
                filters = width * 2**stage
                for block in range(count):
                    stride = 2 if stage > 0 and block == 0 else 1
                    layers.append(BasicBlock(channels, filters, stride))
                    channels = filters
            self.blocks = nn.Sequential(*layers)
            self.extra = conv_bn(channels, channels, 1) if extra else None
            self.head = nn.Linear(channels, num_classes)

        def forward(self, x):
            x = (x - self.mean) / self.std
            x = F.relu(self.stem(x))
            x = self.blocks(x)
            if self.extra is not None:
                x = F.relu(self.extra(x))
            return self.head(x.mean(dim=(2, 3)))

    return ResNet()


def make_case(
    variant,
    images,
    labels,
    *,
    teacher_depth,
    student_depth,
    teacher_width=16,
    student_width=16,
    temperature=4.0,
    alpha=0.3,
    seed=0,
):
    """Builds a teacher, a student and one KD training step in `variant`.

    Args:
        variant: a key of `VARIANTS`.
        images: float32 NHWC array in 0..255; labels: int array.

    Returns:
        `(run, info)`: `run(n)` runs `n` training steps, waits for them and
        returns `{"loss": last loss}`; `info` is a dict of settings to report.
    """
    import torch
    from torch.nn import functional as F

    options = variant_options(variant)
    device = torch.device(options["device"])
    autocast_dtype = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[
        options["precision"]
    ]
    torch.manual_seed(seed)
    teacher = build_resnet(teacher_depth, teacher_width).eval().to(device)
    student = build_resnet(student_depth, student_width).train().to(device)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device)
    y = torch.from_numpy(labels.astype("int64")).to(device)
    if options["channels_last"]:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    optimizer = torch.optim.SGD(
        student.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    # float16 needs loss scaling (as Keras's LossScaleOptimizer under mixed_float16).
    scaler = torch.amp.GradScaler(device.type) if options["precision"] == "float16" else None
    teacher_call, student_call = teacher, student
    if options["compile"]:
        teacher_call = torch.compile(teacher)
        student_call = torch.compile(student)

    def forward():
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            with torch.no_grad():
                teacher_logits = teacher_call(x)
            student_logits = student_call(x)
        return teacher_logits.float(), student_logits.float()  # Losses in float32.

    def step():
        teacher_logits, student_logits = forward()
        hard = F.cross_entropy(student_logits, y)
        soft = (
            F.kl_div(
                F.log_softmax(student_logits / temperature, dim=1),
                F.softmax(teacher_logits / temperature, dim=1),
                reduction="batchmean",
            )
            * temperature**2
        )
        loss = alpha * hard + (1 - alpha) * soft
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        return loss

    def run(steps):
        loss = None
        for _ in range(steps):
            loss = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return {"loss": float(loss.item())}

    info = {
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        **options,
    }
    return run, info
