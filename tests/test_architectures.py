"""Table 1's architectures (sa, sa_ta, sa_ts) and methods: parameter counts, what trains, exact
equivalences at initialisation, the paper's optimiser settings and the valid pairs."""

from __future__ import annotations

import pytest
import torch

import stadapt
from stadapt.ablate.axes import AXES, method_variant, variants
from stadapt.cli import main
from stadapt.engine.schedule import param_groups
from stadapt.errors import RecipeError
from stadapt.model.build import count_parameters, set_impl
from stadapt.model.video_vit import shift_frames

TINY = ["model.backbone=stadapt-tiny-vit", "model.pretrained=none", "data.num_frames=4", "data.crop=64",
        "data.scale=[64,72]", "data.test_views.temporal=1", "model.adapter.width=16"]


def tiny(*overrides: str):
    return stadapt.build_model(stadapt.load_recipe("k400_vitb", TINY + list(overrides))).eval()


def clip(batch: int = 2, frames: int = 4) -> torch.Tensor:
    return torch.randn(batch, 3, frames, 64, 64)


# Table 1, "Fine-tuned Params (M)", ViT-B/16 on K400 (400 classes); st_adapter as the published code counts it.
TABLE1 = {
    "full": "86.11", "full+sa_ta": "121.57", "full+sa_ts": "93.79", "partial": "7.40", "partial+sa_ta": "10.36",
    "temporal+sa_ta": "35.8", "prompt": "1.18", "linear_probe": "0.31", "st_adapter": 7_417_744,
}


@pytest.mark.parametrize("row", sorted(TABLE1))
def test_k400_vitb_trainable_parameters_are_table_1s(row):
    variant = method_variant(row)
    recipe = stadapt.load_recipe("k400_vitb", ["model.pretrained=none", *variant.overrides])
    trainable, _ = count_parameters(stadapt.build_model(recipe, device="meta"))
    expected = TABLE1[row]
    if isinstance(expected, int):
        assert trainable == expected
    else:
        decimals = len(expected.split(".")[1])
        assert f"{trainable / 1e6:.{decimals}f}" == expected


def test_fresh_sa_ta_computes_the_sa_function_and_loads_its_state_dict():
    sa, sa_ta = tiny("model.method=full"), tiny("model.method=full", "model.arch=sa_ta")
    with torch.no_grad():
        for p in sa.parameters():
            p.add_(0.01 * torch.randn_like(p))  # trained weights, not the shared random init
    missing, unexpected = sa_ta.load_state_dict(sa.state_dict(), strict=False)
    assert not unexpected and missing and all(".temporal." in k or k == "time_embed" for k in missing)
    video = clip()
    with torch.no_grad():
        assert torch.equal(sa_ta(video), sa(video))
        for block in sa_ta.blocks:  # once trained, temporal attention changes the function
            block.temporal.temporal_fc.weight.normal_(std=0.1)
        assert not torch.allclose(sa_ta(video), sa(video), atol=1e-3)


def test_temporal_attention_starts_from_the_spatial_weights_as_timesformer_does():
    block = tiny("model.method=temporal", "model.arch=sa_ta").blocks[2]
    assert torch.equal(block.temporal.temporal_attn.in_proj_weight, block.attn.in_proj_weight)
    assert torch.equal(block.temporal.temporal_norm1.weight, block.ln_1.weight)
    assert not block.temporal.temporal_fc.weight.any() and not block.temporal.temporal_fc.bias.any()


@pytest.mark.parametrize("arch", ["sa_ta", "sa_ts"])
def test_fast_equals_reference_for_the_video_architectures(arch):
    model = tiny("model.method=full", f"model.arch={arch}")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "temporal_fc" in name:
                p.normal_(std=0.1)
        video = clip()
        set_impl(model, "fast")
        fast = model(video)
        set_impl(model, "reference")
        torch.testing.assert_close(fast, model(video), atol=1e-5, rtol=1e-5)


def test_temporal_shift_takes_channels_from_the_neighbouring_frames():
    x = torch.arange(2 * 3 * 1 * 8, dtype=torch.float32).view(2 * 3, 1, 8)  # 2 clips of 3 frames, 8 channels
    out = shift_frames(x, num_frames=3).view(2, 3, 1, 8)
    clips = x.view(2, 3, 1, 8)
    assert torch.equal(out[:, 1:, :, :2], clips[:, :-1, :, :2]) and not out[:, 0, :, :2].any()  # from t-1
    assert torch.equal(out[:, :-1, :, 2:4], clips[:, 1:, :, 2:4]) and not out[:, -1, :, 2:4].any()  # from t+1
    assert torch.equal(out[..., 4:], clips[..., 4:])


def test_sa_ts_mixes_frames_where_sa_does_not():
    sa, sa_ts = tiny("model.method=full"), tiny("model.method=full", "model.arch=sa_ts")
    video = clip()
    changed = video.clone()
    changed[:, :, 1] = torch.randn_like(changed[:, :, 1])
    with torch.no_grad():
        # Per-frame CLS tokens before pooling: frame 0's depends on frame 1 only through the shift.
        def cls_of_frame_0(model, v):
            x = model.visual._embeds(v.transpose(1, 2).flatten(0, 1))
            for block in model.blocks:
                x = block(x, 4)
            return x.view(2, 4, *x.shape[1:])[:, 0, 0]
        assert torch.equal(cls_of_frame_0(sa, video), cls_of_frame_0(sa, changed))
        assert not torch.allclose(cls_of_frame_0(sa_ts, video), cls_of_frame_0(sa_ts, changed))
    assert sa_ts(video).shape == (2, 400)


def test_prompt_is_vpt_deep_new_tokens_at_every_block():
    model = tiny("model.method=prompt", "model.prompt_tokens=3")
    assert model.prompts.shape == (4, 3, 96) and model.prompts.requires_grad
    video = clip()
    with torch.no_grad():
        before = model(video)
        model.prompts[2].normal_()  # the third block's prompts alone
        assert not torch.allclose(model(video), before, atol=1e-4)


@pytest.mark.parametrize("row, trains", [
    ("temporal+sa_ta", lambda n: ".temporal." in n or n.startswith(("heads.", "time_embed"))),
    ("partial+sa_ta", lambda n: n.startswith(("heads.", "time_embed", "visual.transformer.resblocks.3.",
                                              "visual.ln_post."))),
    ("full+sa_ts", lambda n: True),
])
def test_video_methods_train_what_the_paper_says(row, trains):
    model = tiny(*method_variant(row).overrides)
    names = {n: p.requires_grad for n, p in model.named_parameters()}
    assert {n for n, g in names.items() if g} == {n for n in names if trains(n)}
    if row == "partial+sa_ta":  # temporal attention only in the last block
        assert [b.temporal is not None for b in model.blocks] == [False, False, False, True]


def test_full_fine_tuning_trains_pretrained_layers_at_a_hundredth_and_new_modules_at_the_base_rate():
    recipe = stadapt.load_recipe("k400_vitb", TINY + ["model.method=full", "model.arch=sa_ta"])
    assert recipe.train.backbone_lr_scale == 0.01
    lr, wd = recipe.train.lr, recipe.train.weight_decay
    model = stadapt.build_model(recipe)
    groups = {g["name"]: g for g in param_groups(model, recipe.train)}
    assert groups["backbone"]["lr"] == pytest.approx(lr / 100)
    assert groups["backbone"]["weight_decay"] == pytest.approx(wd / 100)
    temporal = [p for n, p in model.named_parameters() if ".temporal." in n]
    new = {id(p) for name in ("new", "new-no-decay") for p in groups[name]["params"]}
    assert all(id(p) in new for p in temporal) and groups["new"]["lr"] == lr
    # Partial fine-tuning uses no reduction; a recipe's own value wins.
    assert stadapt.load_recipe("demo", ["model.method=partial"]).train.backbone_lr_scale == 1.0
    explicit = ["model.method=full", "train.backbone_lr_scale=0.1"]
    assert stadapt.load_recipe("demo", explicit).train.backbone_lr_scale == 0.1


def test_method_variant_names_are_table_1s_rows():
    assert [v.name for v in variants(AXES["method"], None, 12)[0]] == [
        "full", "full+sa_ta", "full+sa_ts", "partial", "partial+sa_ta", "temporal+sa_ta", "prompt", "attn_pool",
        "linear_probe", "adapter", "st_adapter"]
    assert method_variant("full+sa_ta").overrides == ("model.method=full", "model.arch=sa_ta")
    assert method_variant("st_adapter").overrides == ("model.method=st_adapter", "model.arch=sa")
    assert method_variant("full+sa").name == "full"
    with pytest.raises(ValueError, match="linear_probe takes arch sa"):
        method_variant("linear_probe+sa_ts")
    with pytest.raises(ValueError, match="a method is one of"):
        method_variant("full+sa_xx")


@pytest.mark.parametrize("method, arch, why", [
    ("linear_probe", "sa_ts", "the temporal shift changes the frozen backbone's function"),
    ("partial", "sa_ts", "the temporal shift changes the frozen backbone's function"),
    ("temporal", "sa", "only sa_ta has"),
    ("st_adapter", "sa_ta", "the new temporal attention must train"),
])
def test_pairs_outside_the_paper_are_one_line_exit_2_and_write_nothing(method, arch, why, tmp_path, capsys,
                                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "demo", "--set", f"model.method={method}", "--set", f"model.arch={arch}",
                 "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"model.method = {method} with model.arch = {arch}" in err and why in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
    with pytest.raises(RecipeError):
        stadapt.load_recipe("demo", [f"model.method={method}", f"model.arch={arch}"])


@pytest.mark.parametrize("row", ["full", "full+sa_ta", "temporal+sa_ta", "st_adapter"])
def test_imagenet_21k_column_counts_as_the_clip_column(row):
    recipe = stadapt.load_recipe("k400_vitb_in21k", list(method_variant(row).overrides))  # no download on meta
    trainable, _ = count_parameters(stadapt.build_model(recipe, device="meta"))
    expected = TABLE1[row]
    if isinstance(expected, int):
        assert trainable == expected
    else:
        assert f"{trainable / 1e6:.{len(expected.split('.')[1])}f}" == expected


@pytest.mark.parametrize("name", ["k400_vitb_swag", "ssv2_vitb_swag", "k400_swinb", "ssv2_swinb", "ssv2_vitb_in21k"])
def test_backbone_recipes_build(name):
    recipe = stadapt.load_recipe(name)
    model = stadapt.build_model(recipe, device="meta")
    assert 7e6 < count_parameters(model)[0] < 15e6  # ST-Adapters and the classifier
    assert model.heads["label"].out_features == recipe.model.num_classes


def test_layer_ablation_reads_the_depth_of_any_librarys_backbone():
    from stadapt.ablate.axes import backbone_depth

    recipe = stadapt.load_recipe("k400_vitb_in21k", ["model.backbone=timm:vit_small_patch16_224",
                                                     "model.pretrained=none"])
    assert backbone_depth(recipe) == 12
    assert backbone_depth(stadapt.load_recipe("k400_vitl", ["model.pretrained=none"])) == 24
