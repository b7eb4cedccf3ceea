"""FitNets hints: Romero, Ballas, Kahou, Chassang, Gatta and Bengio,
"FitNets: Hints for Thin Deep Nets", ICLR 2015 (arXiv:1412.6550)."""

import keras

from kd_keras.distill.losses.base import DistillationLoss, flatten_features, layer_names


@keras.saving.register_keras_serializable(package="kd_keras")
class FitNets(DistillationLoss):
    """Hint loss: `mean((r(student_features) - teacher_features)**2)`.

    The paper's hint-based training regresses the teacher's "hint" layer
    from the student's "guided" layer through a learned convolutional
    regressor `r` (its equation 3, `1/2 ||u_h - r(v_g)||^2`). As in the
    single-stage form of mdistiller and CRD's code (CIFAR-100:
    `FEAT_LOSS_WEIGHT 100`, the middle stage, regressor
    conv 1x1 + batch norm + ReLU, mean over the elements), `r` is a 1x1
    convolution, batch norm and ReLU (a Dense layer for flat features); it
    trains with the student and is never part of the student. Give the
    loss weight 100 (mdistiller's) in the Distiller's
    `distillation_loss_weights`.

    Args:
        teacher_layer_name: the hint layer (default `"stage2"`, the middle
            stage of a kd_keras ResNet, as mdistiller's `HINT_LAYER 2`).
        student_layer_name: the guided layer (default `"stage2"`). Its
            spatial shape must be the teacher's; the channels may differ.
    """

    def __init__(self, teacher_layer_name="stage2", student_layer_name="stage2"):
        self.teacher_layer_names = layer_names("FitNets", "teacher_layer_name", teacher_layer_name)
        self.student_layer_names = layer_names("FitNets", "student_layer_name", student_layer_name)
        if len(self.teacher_layer_names) != 1 or len(self.student_layer_names) != 1:
            raise ValueError(
                "FitNets: give one teacher_layer_name and one student_layer_name, got "
                f"{teacher_layer_name!r} and {student_layer_name!r}"
            )
        self.teacher_layer_name = self.teacher_layer_names[0]
        self.student_layer_name = self.student_layer_names[0]
        self.adapter = None

    @property
    def adapters(self):
        return [self.adapter] if self.adapter is not None else []

    def build(self, teacher_shapes, student_shapes):
        (t_shape,), (s_shape,) = teacher_shapes, student_shapes
        t_shape, s_shape = tuple(t_shape), tuple(s_shape)
        if len(t_shape) != len(s_shape) or t_shape[:-1] != s_shape[:-1]:
            raise self.shape_error(
                self.teacher_layer_name,
                t_shape,
                self.student_layer_name,
                s_shape,
                "the regressor maps channels only, so all other axes must be equal",
            )
        name = f"fitnets_adapter_{self.student_layer_name}"
        if len(s_shape) == 3:
            layers = [
                keras.layers.Conv2D(t_shape[-1], 1, use_bias=False, dtype="float32"),
                # Synchronized: under tf.distribute the statistics of the
                # global batch, so replicas train as one device does.
                keras.layers.BatchNormalization(synchronized=True, dtype="float32"),
                keras.layers.ReLU(dtype="float32"),
            ]
        else:
            layers = [keras.layers.Dense(t_shape[-1], dtype="float32")]
        self.adapter = keras.Sequential([keras.Input(s_shape), *layers], name=name)

    def per_example(self, teacher_outputs, student_outputs, y=None, training=None):
        if self.adapter is None:
            raise RuntimeError("FitNets: the Distiller builds the adapter; call it through one.")
        regressed = self.adapter(student_outputs[0], training=training)
        difference = flatten_features(regressed) - flatten_features(teacher_outputs[0])
        return keras.ops.mean(keras.ops.square(difference), axis=-1)

    def get_config(self):
        return {
            "teacher_layer_name": self.teacher_layer_name,
            "student_layer_name": self.student_layer_name,
        }
