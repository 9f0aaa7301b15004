"""timm and torchvision backbones: created by their library, weights from files the tests write
(never a download), the same function as the library's own model, mean/std from the library,
and an adapter artifact that rebuilds them."""

from __future__ import annotations

import pytest
import torch

import stadapt
import stadapt.model.build
from stadapt.errors import CheckpointError, RecipeError

FRAMES = 2
SMALL = ["data.num_frames=2", "data.crop=32", "data.scale=[32,36]", "data.test_views.temporal=1",
         "model.adapter.width=8", "model.num_classes=5"]


def recipe(backbone: str, pretrained: str, *overrides: str):
    return stadapt.load_recipe("k400_vitb", [f"model.backbone={backbone}", f"model.pretrained={pretrained}",
                                             *SMALL, *overrides])


def timm_file(tmp_path):
    import timm

    torch.manual_seed(3)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0).eval()
    torch.save(model.state_dict(), tmp_path / "vit_tiny.pt")
    return model, tmp_path / "vit_tiny.pt"


def torchvision_file(tmp_path):
    from torchvision.models import get_model

    torch.manual_seed(4)
    model = get_model("vit_b_16", weights=None, image_size=32).eval()
    torch.save(model.state_dict(), tmp_path / "vit_b_16.pt")
    return model, tmp_path / "vit_b_16.pt"


def timm_cls(model, frames):
    x = model.norm_pre(model._pos_embed(model.patch_embed(frames)))
    return model.blocks(x)[:, 0]


def torchvision_cls(model, frames):
    x = model._process_input(frames)
    x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
    return model.encoder.layers(model.encoder.dropout(x + model.encoder.pos_embedding))[:, 0]


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_library_vit_computes_the_librarys_function(library, tmp_path):
    source, path = timm_file(tmp_path) if library == "timm" else torchvision_file(tmp_path)
    name = "timm:vit_tiny_patch16_224" if library == "timm" else "torchvision:vit_b_16"
    model = stadapt.build_model(recipe(name, str(path), "model.method=linear_probe")).eval()
    video = torch.randn(2, 3, FRAMES, 32, 32)
    frames = video.transpose(1, 2).flatten(0, 1)
    final_norm = source.norm if library == "timm" else source.encoder.ln
    with torch.no_grad():
        cls = (timm_cls if library == "timm" else torchvision_cls)(source, frames).view(2, FRAMES, -1).mean(1)
        expected = model.heads["label"](final_norm(cls))
        torch.testing.assert_close(model(video), expected, atol=1e-5, rtol=1e-5)
    mean = (0.5, 0.5, 0.5) if library == "timm" else (0.485, 0.456, 0.406)
    assert tuple(model.image_mean) == pytest.approx(mean)
    assert model.backbone_identity["library"] == library and len(model.backbone_identity["pretrained_sha256"]) == 64


def test_st_adapter_on_a_timm_vit_round_trips_through_its_artifact(tmp_path):
    _, path = timm_file(tmp_path)
    built = recipe("timm:vit_tiny_patch16_224", str(path))
    model = stadapt.build_model(built).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.normal_(std=0.2)
    stadapt.save_adapter(model, tmp_path / "run" / "adapter.safetensors", recipe=built)
    loaded = stadapt.load_model(tmp_path / "run").eval()
    video = torch.randn(2, 3, FRAMES, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(video), model(video))
    assert loaded.backbone_identity == model.backbone_identity


def test_sa_ta_on_a_timm_vit_starts_as_its_sa_function(tmp_path):
    _, path = timm_file(tmp_path)
    sa = stadapt.build_model(recipe("timm:vit_tiny_patch16_224", str(path), "model.method=full")).eval()
    sa_ta = stadapt.build_model(recipe("timm:vit_tiny_patch16_224", str(path), "model.method=full",
                                       "model.arch=sa_ta")).eval()
    sa_ta.heads.load_state_dict(sa.heads.state_dict())
    video = torch.randn(2, 3, FRAMES, 32, 32)
    with torch.no_grad():
        assert torch.equal(sa_ta(video), sa(video))


def test_bad_library_names_and_weights_are_one_line(tmp_path):
    with pytest.raises(RecipeError, match="timm has no model 'vit_tinyy'"):
        stadapt.build_model(recipe("timm:vit_tinyy", "none"))
    with pytest.raises(RecipeError, match="is not a file nor torchvision weights of vit_b_16"):
        stadapt.build_model(recipe("torchvision:vit_b_16", "IMAGENET1K_SWAG_LINEAR_V9"))
    (tmp_path / "wrong.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot load checkpoint"):
        stadapt.build_model(recipe("timm:vit_tiny_patch16_224", str(tmp_path / "wrong.pt")))


def swin_file(tmp_path):
    import timm

    torch.manual_seed(5)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=64, num_classes=0).eval()
    torch.save(model.state_dict(), tmp_path / "swin.pt")
    return model, tmp_path / "swin.pt"


def test_swin_with_st_adapters_starts_as_timms_swin_and_adapts_every_stage(tmp_path):
    source, path = swin_file(tmp_path)
    swin = ["data.crop=64", "data.scale=[64,72]"]
    model = stadapt.build_model(recipe("timm:swin_tiny_patch4_window7_224", str(path), *swin)).eval()
    widths = [block.adapters["before_attn"].fc1.out_features for block in model.blocks]
    assert widths == [48] * 2 + [96] * 2 + [192] * 6 + [384] * 2  # half of each stage's 96, 192, 384, 768
    video = torch.randn(2, 3, FRAMES, 64, 64)
    with torch.no_grad():
        per_frame = source.forward_head(source.forward_features(video.transpose(1, 2).flatten(0, 1)),
                                        pre_logits=True)
        expected = model.heads["label"](per_frame.view(2, FRAMES, -1).mean(1))
        torch.testing.assert_close(model(video), expected, atol=1e-5, rtol=1e-5)  # adapters start as identities
        for name, p in model.named_parameters():
            if ".adapters." in name:
                p.normal_(std=0.1)
        fast = model(video)
        stadapt.model.build.set_impl(model, "reference")  # nn.Conv3d over the T×H×W volume of each stage
        torch.testing.assert_close(fast, model(video), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(fast, expected, atol=1e-3)
    assert tuple(model.image_mean) == pytest.approx((0.485, 0.456, 0.406))


@pytest.mark.parametrize("override, message", [
    ("model.arch=sa_ta", "Swin takes arch sa"),
    ("model.method=prompt", "model.method = 'prompt' is not built for timm:swin_base_patch4_window7_224"),
])
def test_swin_refuses_plain_vit_architectures_in_one_line(override, message):
    with pytest.raises(RecipeError, match=message):
        stadapt.load_recipe("k400_vitb", ["model.backbone=timm:swin_base_patch4_window7_224", override,
                                          "model.method=full" if "arch" in override else "model.dropout=0.5"])
