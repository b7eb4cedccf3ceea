"""Rebuilding a functional or Sequential model with some layers changed.

Both model transforms of kd_keras work on the model's config, not on its
live layers: swapping a layer class (`FusedBatchNormalization` <->
`BatchNormalization`) and folding batch norm into the convolution before it
(`fold_batch_norm`). Editing the config and calling `from_config` gives a
fresh model with the same graph, names and dtype policies, with no
variables shared with the original.
"""

import keras


def model_config(model):
    """`model.get_config()` of a functional or Sequential model.

    Raises:
        ValueError: for a model whose config is not a layer graph (a
            subclassed model).
    """
    try:
        config = model.get_config()
    except NotImplementedError:
        config = None
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ValueError(
            f"model '{model.name}' ({type(model).__name__}) is not a functional "
            "or Sequential model, so its layers cannot be rebuilt"
        )
    return config


def _rewire(value, renames):
    """`value` (a piece of a functional config) with every reference to a
    layer in `renames` pointed at `renames[layer]` instead."""
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            history = list(value["config"]["keras_history"])
            if history[0] in renames:
                history[0] = renames[history[0]]
                value = {**value, "config": {**value["config"], "keras_history": history}}
            return value
        return {key: _rewire(item, renames) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        # `input_layers` / `output_layers` entries are [name, node, tensor].
        if (
            len(value) == 3
            and isinstance(value[0], str)
            and value[0] in renames
            and isinstance(value[1], int)
        ):
            return [renames[value[0]], *value[1:]]
        return [_rewire(item, renames) for item in value]
    return value


def rebuild(model, *, edit=None, drop=None):
    """A new model from `model`'s config, with layers edited or dropped.

    Args:
        model: a functional or Sequential `keras.Model`.
        edit: `{layer_name: function(entry) -> entry}`, applied to that
            layer's serialized entry (`class_name`, `config`, ...).
        drop: `{layer_name: replacement_name}`: layers to remove; every
            input they fed now comes from `replacement_name` (whose output
            must have the same shape).

    Returns:
        The new, uncompiled model. Its weights are freshly initialised:
        copy them with `copy_weights`.
    """
    edit = edit or {}
    drop = drop or {}
    config = model_config(model)
    layers = []
    for entry in config["layers"]:
        name = entry.get("name") or entry["config"].get("name")
        if name in drop:
            continue
        if name in edit:
            entry = edit[name](entry)
        layers.append(_rewire(entry, drop))
    config = {**config, "layers": layers}
    for key in ("input_layers", "output_layers"):
        if key in config:
            config[key] = _rewire(config[key], drop)
    return model.__class__.from_config(config)


def copy_weights(source, target, skip=()):
    """Copies each layer's weights from `source` to the same-named layer
    of `target`, except the layers named in `skip`."""
    for layer in source.layers:
        if layer.name not in skip and layer.weights:
            target.get_layer(layer.name).set_weights(layer.get_weights())


def replace_layer_classes(model, old_class, new_class):
    """A copy of `model` in which every layer of exactly `old_class` is a
    `new_class` built from the same config, with the same weights.

    Returns `model` itself when it has no such layer.
    """
    names = {layer.name for layer in model.layers if type(layer) is old_class}
    if not names:
        return model
    template = None

    def swap(entry):
        nonlocal template
        if template is None:
            probe = new_class.from_config(entry["config"])
            template = keras.saving.serialize_keras_object(probe)
        return {
            **entry,
            "module": template["module"],
            "class_name": template["class_name"],
            "registered_name": template["registered_name"],
        }

    copy = rebuild(model, edit={name: swap for name in names})
    copy_weights(model, copy)
    copy.trainable = model.trainable
    return copy
