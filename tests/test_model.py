import copy
import os
import pickle

import pytest
import torch

import stadapt
from stadapt.errors import CheckpointError, RecipeError
from stadapt.model.adapter import STAdapter
from stadapt.model.build import count_parameters, set_impl
from stadapt.model.video_vit import packed_attention

TINY = ["model.backbone=stadapt-tiny-vit", "model.pretrained=none", "data.num_frames=4", "data.crop=64",
        "data.scale=[64,72]", "data.test_views.temporal=1", "model.adapter.width=16"]


def tiny(*overrides: str):
    return stadapt.build_model(stadapt.load_recipe("k400_vitb", TINY + list(overrides))).eval()


def randomise_adapters(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, STAdapter):
                for p in module.parameters():
                    p.normal_(std=0.2)


def clip(batch=2, frames=4):
    return torch.randn(batch, 3, frames, 64, 64)


def fast_and_reference(model, video):
    """The model's logits on the fast path, then on the reference path (same weights)."""
    with torch.no_grad():
        set_impl(model, "fast")
        fast = model(video)
        set_impl(model, "reference")
        return fast, model(video)


def test_fresh_adapter_is_exact_identity():
    adapter = STAdapter(96, 16, (3, 1, 1))
    x = torch.randn(2 * 4, 1 + 64, 96)
    assert torch.equal(adapter(x, num_frames=4), x)


def test_fresh_adapted_model_equals_frozen_backbone():
    model = tiny("model.adapter.positions=[before_attn, after_attn, after_ffn]")
    plain = copy.deepcopy(model)
    for block in plain.blocks:
        block.adapters.clear()
    video = clip()
    assert torch.equal(model(video), plain(video))


@pytest.mark.parametrize("kernel", [[1, 1, 1], [3, 1, 1], [1, 3, 3], [3, 3, 3], [5, 1, 1]])
@pytest.mark.parametrize("positions", [["before_attn"], ["after_attn"], ["after_ffn"],
                                       ["before_attn", "after_attn", "after_ffn"]])
def test_fast_equals_reference(kernel, positions):
    model = tiny(f"model.adapter.kernel={kernel}", f"model.adapter.positions={positions}")
    randomise_adapters(model)
    video = clip()
    fast, reference = fast_and_reference(model, video)
    assert not torch.allclose(fast, tiny()(video), atol=1e-3)  # the adapters do something
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positions", [["before_attn"], ["before_attn", "after_attn", "after_ffn"]])
def test_fast_equals_reference_gradients(positions):
    model = tiny(f"model.adapter.positions={positions}")
    randomise_adapters(model)
    grads = {}
    for impl in ("fast", "reference"):
        set_impl(model, impl)
        model.zero_grad()
        torch.manual_seed(1)
        model(clip()).square().mean().backward()
        grads[impl] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert grads["fast"].keys() == grads["reference"].keys() == trainable  # every one gets a gradient
    for name in grads["fast"]:
        torch.testing.assert_close(grads["fast"][name], grads["reference"][name], atol=1e-5, rtol=1e-4)


def test_adapter_artifact_holds_only_trainable_tensors(tmp_path):
    recipe = stadapt.load_recipe("k400_vitb", TINY)
    model = stadapt.build_model(recipe).eval()
    randomise_adapters(model)
    path = stadapt.save_adapter(model, tmp_path / "adapter.safetensors", recipe=recipe,
                                class_names={"label": [f"c{i}" for i in range(400)]})
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        keys = set(fh.keys())
        metadata = fh.metadata()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert keys == set(trainable) and "visual.conv1.weight" not in keys
    assert metadata["format"] == "stadapt-adapter/1" and "stadapt-tiny-vit" in metadata["backbone_identity"]
    loaded = stadapt.load_model(tmp_path)
    for name, param in loaded.named_parameters():
        if name in keys:
            assert torch.equal(param, trainable[name])
    assert loaded.class_names["label"][3] == "c3" and loaded.recipe.model.adapter.width == 16


def test_round_trip_with_pretrained_file_is_exact(tmp_path):
    import open_clip

    clip_model = open_clip.create_model("stadapt-tiny-vit")
    weights = tmp_path / "tiny.pt"
    torch.save(clip_model.state_dict(), weights)
    recipe = stadapt.load_recipe("k400_vitb", TINY + [f"model.pretrained={weights}"])
    model = stadapt.build_model(recipe).eval()
    torch.testing.assert_close(model.visual.conv1.weight, clip_model.visual.conv1.weight, rtol=0, atol=0)
    assert len(model.backbone_identity["pretrained_sha256"]) == 64
    randomise_adapters(model)
    stadapt.save_adapter(model, tmp_path / "run" / "adapter.safetensors", recipe=recipe)
    loaded = stadapt.load_model(tmp_path / "run").eval()
    video = clip()
    assert torch.equal(loaded(video), model(video))
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")  # the backbone file changed
    with pytest.raises(CheckpointError):
        stadapt.load_model(tmp_path / "run")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_pickled_code_in_a_backbone_checkpoint_is_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"state_dict": _Exploit()}))
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        stadapt.build_model(stadapt.load_recipe("k400_vitb", TINY + [f"model.pretrained={evil}"]))
    assert not (tmp_path / "pwned-by-pickle").exists()


def test_missing_and_unknown_backbones_are_one_line():
    with pytest.raises(RecipeError, match="is not a file"):
        stadapt.load_recipe("k400_vitb", ["model.pretrained=/missing/weights.pt"])
    with pytest.raises(RecipeError, match="not an open_clip model"):
        tiny("model.backbone=ViT-B-61")
    with pytest.raises(RecipeError, match="QuickGELU"):
        stadapt.build_model(stadapt.load_recipe("k400_vitb", ["model.backbone=ViT-B-16"]))


def test_k400_vitb_trainable_parameters_match_the_paper():
    model = stadapt.build_model(stadapt.load_recipe("k400_vitb", ["model.pretrained=none"]))
    assert count_parameters(model)[0] == 7_417_744


TRAINS = {
    "st_adapter": lambda n: ".adapters." in n or n.startswith("heads."),
    "adapter": lambda n: ".adapters." in n or n.startswith("heads."),
    "linear_probe": lambda n: n.startswith("heads."),
    "full": lambda n: True,
    "partial": lambda n: n.startswith(("heads.", "visual.transformer.resblocks.3.", "visual.ln_post.")),
    "prompt": lambda n: n.startswith(("heads.", "prompts")),
    "attn_pool": lambda n: n.startswith(("heads.", "pool.")),
}


@pytest.mark.parametrize("method", sorted(TRAINS))
def test_each_method_trains_what_the_paper_says(method):
    model = tiny(f"model.method={method}")
    names = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n for n, g in names.items() if g} == {n for n in names if TRAINS[method](n)}
    assert any(n.startswith("heads.") for n, g in names.items() if g)
    has_conv = any(".conv." in n for n in names)
    assert has_conv == (method == "st_adapter")
    assert model(clip()).shape == (2, 400)


def test_adapter_layers_subset_and_several_heads():
    model = tiny("model.adapter.layers=[1, 3]", "model.num_classes={verb: 5, noun: 7}")
    wrapped = [bool(b.adapters) for b in model.blocks]
    assert wrapped == [False, True, False, True]
    out = model(clip())
    assert set(out) == {"verb", "noun"} and out["verb"].shape == (2, 5) and out["noun"].shape == (2, 7)
    with pytest.raises(RecipeError, match="has blocks 0..3"):
        tiny("model.adapter.layers=[4]")


@pytest.mark.parametrize("training", [True, False])
def test_packed_attention_computes_what_multihead_attention_computes(training):
    attn = tiny().blocks[0].attn
    attn.train(training)
    x = torch.randn(3, 17, attn.embed_dim, requires_grad=training)
    with torch.set_grad_enabled(training):
        expected = attn(x, x, x, need_weights=False)[0]
        torch.testing.assert_close(packed_attention(attn, x), expected, atol=1e-6, rtol=1e-5)


def test_packed_attention_of_the_first_queries_equals_those_rows_of_full_attention():
    attn = tiny().blocks[0].attn
    x = torch.randn(3, 17, attn.embed_dim)
    torch.testing.assert_close(packed_attention(attn, x, num_queries=1), packed_attention(attn, x)[:, :1],
                               atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("method", ["linear_probe", "partial", "prompt", "attn_pool"])
def test_fast_equals_reference_for_every_method(method):
    fast, reference = fast_and_reference(tiny(f"model.method={method}"), clip())
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=1e-5)


def test_the_model_normalises_uint8_pixels_with_its_backbones_mean_and_std():
    model = tiny()
    model.image_mean, model.image_std = (0.5, 0.5, 0.5), (0.25, 0.5, 0.5)
    white = torch.full((2, 3, 4, 8, 8), 255, dtype=torch.uint8)
    out = model.normalise(white)
    assert out.dtype == torch.float32 and out.shape == white.shape and out.device == white.device
    assert torch.allclose(out[:, 0], torch.tensor(2.0)) and torch.allclose(out[:, 1], torch.tensor(1.0))
    x = clip()
    assert model.normalise(x) is x  # float input is taken as normalised

    pixels = torch.randint(0, 256, (2, 3, 4, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model(pixels), model(model.normalise(pixels)))


def test_inside_stadapt_a_model_returns_a_dict_and_the_public_api_unwraps_one_head():
    from stadapt.model.build import build_model

    recipe = stadapt.load_recipe("k400_vitb", TINY + ["model.num_classes=5"])
    internal, public = build_model(recipe).eval(), stadapt.build_model(recipe).eval()
    public.load_state_dict(internal.state_dict())
    x = clip()
    with torch.no_grad():
        logits = internal(x)
        assert list(logits) == ["label"] and logits["label"].shape == (2, 5)
        assert torch.equal(public(x), logits["label"]) and torch.equal(public.logits(x)["label"], logits["label"])
        two = stadapt.build_model(stadapt.load_recipe("k400_vitb", TINY + ["model.num_classes={verb: 3, noun: 4}"]))
        assert {h: t.shape for h, t in two.eval()(x).items()} == {"verb": (2, 3), "noun": (2, 4)}
