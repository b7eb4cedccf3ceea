"""How the Distiller's losses read the models: the losses and their
weights checked, each feature loss's layer names resolved (`"stage2"` ->
`"s2b3_out"`), its shapes checked and its adapters built, and the models
that return the logits and those layers' outputs in one pass.
"""

import keras

from kd_keras.distill.losses.base import DistillationLoss, resolve_layer

# The key of the final output (logits) in a feature extractor's outputs.
LOGITS = "__logits__"


def check_losses(losses, weights):
    """`(losses, weights)` as lists (None, None: the default loss)."""
    if losses is None:
        if weights is not None:
            raise ValueError(
                "distillation_loss_weights needs distillation_losses (one weight per loss)."
            )
        return None, None
    losses = list(losses) if isinstance(losses, (list, tuple)) else [losses]
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            raise ValueError(
                "distillation_losses must be kd_keras.distill.losses objects (HintonKD, DKD, "
                f"FitNets, ...), got {type(loss).__name__}; for keras.distillation's "
                "LogitsDistillation use HintonKD, for FeatureDistillation kd_keras's own."
            )
    if not losses:
        raise ValueError("distillation_losses is empty: give at least one loss.")
    if weights is None:
        weights = [1.0] * len(losses)
    weights = list(weights) if isinstance(weights, (list, tuple)) else [weights]
    if len(weights) != len(losses):
        raise ValueError(
            f"distillation_loss_weights has {len(weights)} weights for "
            f"{len(losses)} distillation_losses: give one per loss."
        )
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ValueError(f"distillation_loss_weights must be numbers >= 0, got {weight!r}")
    return losses, [float(w) for w in weights]


def _feature_shape(layer):
    return tuple(layer.output.shape[1:])


class FeatureExtraction:
    """The models returning the logits and the feature losses' layer
    outputs in one pass (teacher, student), and each loss's layer names as
    resolved (`"stage2"` -> `"s2b3_out"`). Builds the losses (shape checks,
    adapters)."""

    def __init__(self, student, teacher, losses):
        self.teacher = self.student = None
        self.teacher_names, self.student_names = {}, {}
        feature_losses = [(i, loss) for i, loss in enumerate(losses) if loss.uses_features]
        if not feature_losses:
            return
        for role, model in (("teacher", teacher), ("student", student)):
            if not getattr(model, "inputs", None):
                raise ValueError(
                    f"Feature losses read named layers of functional or Sequential models; "
                    f"the {role} {model.name} ({type(model).__name__}) is subclassed."
                )
        teacher_layers, student_layers = {}, {}
        for index, loss in feature_losses:
            t_layers = [resolve_layer(teacher, n, "teacher") for n in loss.teacher_layer_names]
            s_layers = [resolve_layer(student, n, "student") for n in loss.student_layer_names]
            self.teacher_names[index] = [layer.name for layer in t_layers]
            self.student_names[index] = [layer.name for layer in s_layers]
            teacher_layers.update((layer.name, layer) for layer in t_layers)
            student_layers.update((layer.name, layer) for layer in s_layers)
            loss.resolved_layer_names = {
                "teacher": dict(zip(loss.teacher_layer_names, self.teacher_names[index])),
                "student": dict(zip(loss.student_layer_names, self.student_names[index])),
            }
            loss.build([_feature_shape(x) for x in t_layers], [_feature_shape(x) for x in s_layers])
        self.teacher = self._extractor(teacher, teacher_layers)
        self.student = self._extractor(student, student_layers)

    @staticmethod
    def _extractor(model, layers):
        outputs = {LOGITS: model.outputs[0]}
        outputs.update((name, layer.output) for name, layer in layers.items())
        return keras.Model(model.inputs, outputs, name=f"{model.name}_features")

    def loss_inputs(self, index, teacher_features, student_features):
        """`(teacher_outputs, student_outputs)` of the feature loss at
        `index`: its layers' outputs, in its order, from the extractors'."""
        teacher = [teacher_features[name] for name in self.teacher_names[index]]
        student = [student_features[name] for name in self.student_names[index]]
        return teacher, student
