"""`--method`: a `RunConfig`'s distillation method as loss objects.

The names and hyperparameters are `RunConfig` fields (kd_keras/config.py,
Keras-free: `METHODS`, `validate_method`); this module makes the losses.
"""

from kd_keras.distill.losses.attention import AttentionTransfer
from kd_keras.distill.losses.dkd import DKD
from kd_keras.distill.losses.fitnets import FitNets
from kd_keras.distill.losses.hinton import HintonKD


def method_losses(config, temperature=None):
    """`(distillation_losses, distillation_loss_weights)` of `config.method`.

    `(None, None)` for plain Hinton KD: the Distiller's default loss (with
    compile's `temperature`), so such a run computes what it always did.

    Args:
        config: a `RunConfig`.
        temperature: T overriding `config.temperature` (a search trial's).
    """
    temperature = config.temperature if temperature is None else temperature
    method = config.method
    if method == "hinton":
        if not config.logit_standardization:
            return None, None
        return [HintonKD(temperature, standardize=True)], [1.0]
    if method == "dkd":
        loss = DKD(
            alpha=config.dkd_alpha,
            beta=config.dkd_beta,
            temperature=temperature,
            warmup_epochs=config.dkd_warmup_epochs,
            standardize=config.logit_standardization,
        )
        return [loss], [1.0]
    if method == "fitnets":
        return [FitNets(config.hint_layer, config.hint_layer)], [config.hint_weight]
    if method == "at":
        return [AttentionTransfer(beta=config.at_beta)], [1.0]
    raise ValueError(f"unknown method {method!r}")


def method_summary(config):
    """The method and the hyperparameters it uses, for a results row."""
    summary = {"method": config.method}
    if getattr(config, "other_teachers", None):
        summary.update(
            other_teachers=list(config.other_teachers), teachers_mode=config.teachers_mode
        )
    if config.method in ("hinton", "dkd"):
        summary["logit_standardization"] = config.logit_standardization
    if config.method == "dkd":
        summary.update(
            dkd_alpha=config.dkd_alpha,
            dkd_beta=config.dkd_beta,
            dkd_warmup_epochs=config.dkd_warmup_epochs,
        )
    elif config.method == "fitnets":
        summary.update(hint_layer=config.hint_layer, hint_weight=config.hint_weight)
    elif config.method == "at":
        summary["at_beta"] = config.at_beta
    return summary
