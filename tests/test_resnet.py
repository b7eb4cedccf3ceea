import keras
import numpy as np
import pytest

from kd_keras.models.resnet import build_resnet, count_flops, stage_blocks


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


# He et al. (2016) CIFAR ResNets with option-A shortcuts: 0.27 M, 0.46 M,
# 0.85 M parameters (exact counts of the reference implementation, weights
# plus batch-norm scale and shift).
@pytest.mark.parametrize("depth, expected", [(20, 269_722), (32, 464_154), (56, 853_018)])
def test_6n_plus_2_depths_are_he_et_al_resnets(depth, expected):
    model = build_resnet(depth)
    assert trainable_params(model) == expected
    blocks, extra = stage_blocks(depth)
    assert blocks == ((depth - 2) // 6,) * 3 and not extra


def test_resnet20_flops_match_the_known_41_million_multiply_adds():
    assert count_flops(build_resnet(20)) / 2 == pytest.approx(40.55e6, rel=0.01)


def test_other_depths_follow_the_documented_rule():
    assert stage_blocks(30) == ((5, 5, 4), False)
    assert stage_blocks(15) == ((2, 2, 2), True)
    assert stage_blocks(8) == ((1, 1, 1), False)
    # depth counts weighted layers: stem + 2 per block + extra conv + dense.
    for depth in (8, 15, 30, 33):
        model = build_resnet(depth)
        weighted = [
            layer
            for layer in model.layers
            if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))
        ]
        assert len(weighted) == depth


@pytest.mark.parametrize("depth", [7, 0, -2, 20.0, "20", True])
def test_unbuildable_depths_are_refused_with_the_rule(depth):
    with pytest.raises(ValueError, match="depth must be an int >= 8") as info:
        build_resnet(depth)
    assert repr(depth) in str(info.value)
    assert "6n+2" in str(info.value)


def test_width_and_classes_shape_the_model():
    model = build_resnet(8, width=4, num_classes=100)
    assert model.output_shape == (None, 100)
    assert model.get_layer("s3b1_a_conv").filters == 16
    with pytest.raises(ValueError, match="width must be a positive int, got 0"):
        build_resnet(8, width=0)


def test_shipped_model_reloads_in_safe_mode_with_stock_keras_layers(tmp_path):
    from kd_keras.train.measure import save_model

    model = build_resnet(8, width=4)  # Fused batch norm, kd_keras's layer.
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3)).astype("float32")
    path = tmp_path / "m.keras"
    save_model(model, path)
    reloaded = keras.saving.load_model(path, safe_mode=True, custom_objects={})
    assert {type(layer).__module__.split(".")[0] for layer in reloaded.layers} == {"keras"}
    np.testing.assert_allclose(
        reloaded.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-5
    )


def test_model_normalises_raw_pixels_inside():
    model = build_resnet(8, width=4)
    normalize = model.get_layer("normalize")
    mean_image = np.broadcast_to(np.array([125.3, 123.0, 113.9], "float32"), (1, 32, 32, 3))
    np.testing.assert_allclose(np.asarray(normalize(mean_image)), 0.0, atol=1e-4)
