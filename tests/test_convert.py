import os
import pickle

import open_clip
import pytest
import torch
import torch.nn.functional as F

import stadapt
from stadapt.cli import main
from stadapt.errors import CheckpointError
from stadapt.model.convert import convert_official

FRAMES, SIZE, DIM, DEPTH, CLASSES = 4, 64, 96, 4, 5
PUBLIC_NAMES = {"before_attn": "adapter_pre_attn", "after_attn": "adapter_pre_mlp"}


@pytest.fixture(scope="module")
def backbone_file(tmp_path_factory):
    """The tiny ViT's weights in a file, so the converted model and the oracle share them."""
    path = tmp_path_factory.mktemp("backbone") / "tiny.pt"
    torch.save(open_clip.create_model("stadapt-tiny-vit").state_dict(), path)
    return path


def recipe_args(backbone_file, tmp_path):
    return ["model.backbone=stadapt-tiny-vit", f"model.pretrained={backbone_file}", f"data.num_frames={FRAMES}",
            f"data.crop={SIZE}", "data.scale=[64,72]", "data.test_views.temporal=1", f"data.root={tmp_path}/data",
            "model.adapter.positions=[after_ffn]", "model.adapter.width=7"]  # both overridden by the checkpoint


def public_checkpoint(blocks, positions, width=12, kernel=(3, 1, 1), prefix="module.") -> dict:
    """Random tensors in the key layout of the public ST-Adapter code's `torch.save`."""
    state = {}
    for block in blocks:
        for position in positions:
            key = f"{prefix}transformer.resblocks.{block}.{PUBLIC_NAMES[position]}"
            state[f"{key}.fc1.weight"] = torch.randn(width, DIM) * 0.1
            state[f"{key}.fc1.bias"] = torch.randn(width) * 0.1
            state[f"{key}.conv.weight"] = torch.randn(width, 1, *kernel) * 0.3
            state[f"{key}.conv.bias"] = torch.randn(width) * 0.1
            state[f"{key}.fc2.weight"] = torch.randn(DIM, width) * 0.1
            state[f"{key}.fc2.bias"] = torch.randn(DIM) * 0.1
    state[f"{prefix}fc.weight"] = torch.randn(CLASSES, DIM) * 0.1
    state[f"{prefix}fc.bias"] = torch.randn(CLASSES) * 0.1
    return {"model": state, "optimizer": {"state": {}, "param_groups": []}, "lr_sched": {"last_epoch": 3},
            "loss_scaler": {"scale": 65536.0}, "next_epoch": 4}


def public_adapter(x, weights, num_frames):
    """The public code's Adapter.forward: fc1, depth-wise Conv3d on B×C×T×H×W, fc2, add to patches."""
    bt, length, _ = x.shape
    side = round((length - 1) ** 0.5)
    x_id = x.clone()
    x = x[:, 1:]
    x = F.linear(x, weights["fc1.weight"], weights["fc1.bias"])
    width = x.shape[-1]
    x = x.view(bt // num_frames, num_frames, side, side, width).permute(0, 4, 1, 2, 3).contiguous()
    kernel = weights["conv.weight"].shape[2:]
    x = F.conv3d(x, weights["conv.weight"], weights["conv.bias"], padding=tuple(k // 2 for k in kernel), groups=width)
    x = x.permute(0, 2, 3, 4, 1).contiguous().view(bt, length - 1, width)
    x = F.linear(x, weights["fc2.weight"], weights["fc2.bias"])
    x_id[:, 1:] += x
    return x_id


def public_forward(backbone_file, checkpoint, video, prefix):
    """An independent oracle of the public model: CLIP ViT per frame, adapters, mean CLS, ln_post, fc."""
    visual = open_clip.create_model("stadapt-tiny-vit", pretrained=str(backbone_file)).visual.eval()
    state = {k.removeprefix(prefix): v for k, v in checkpoint["model"].items()}
    batch, _, frames, height, width = video.shape
    x = video.permute(0, 2, 1, 3, 4).reshape(batch * frames, 3, height, width)
    x = visual.conv1(x).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = visual.ln_pre(torch.cat([cls, x], dim=1) + visual.positional_embedding)
    for i, block in enumerate(visual.transformer.resblocks):
        def adapter(name, i=i):
            prefix = f"transformer.resblocks.{i}.{name}."
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

        if pre_attn := adapter("adapter_pre_attn"):
            x = public_adapter(x, pre_attn, frames)
        y = block.ln_1(x)
        x = x + block.attn(y, y, y, need_weights=False)[0]
        if pre_mlp := adapter("adapter_pre_mlp"):
            x = public_adapter(x, pre_mlp, frames)
        x = x + block.mlp(block.ln_2(x))
    feature = visual.ln_post(x[:, 0].view(batch, frames, -1).mean(dim=1))
    return F.linear(feature, state["fc.weight"], state["fc.bias"])


@pytest.mark.parametrize("blocks, positions, kernel, prefix", [
    (range(DEPTH), ["after_attn"], (3, 1, 1), "module."),  # the public K400 layout
    (range(DEPTH), ["before_attn", "after_attn"], (3, 1, 1), ""),  # the public SSv2 layout
    ([1, 3], ["before_attn"], (3, 3, 3), "module.backbone."),
])
def test_converted_run_computes_the_public_model(backbone_file, tmp_path, blocks, positions, kernel, prefix):
    checkpoint = public_checkpoint(blocks, positions, kernel=kernel, prefix=prefix)
    torch.save(checkpoint, tmp_path / "ckpt.pth")
    done = convert_official(tmp_path / "ckpt.pth", "k400_vitb", tmp_path / "run", recipe_args(backbone_file, tmp_path))
    adapter = done.recipe.model.adapter
    assert adapter.positions == positions and adapter.width == 12 and adapter.kernel == list(kernel)
    assert adapter.layers == ("all" if list(blocks) == list(range(DEPTH)) else list(blocks))
    assert done.tensors == 6 * len(blocks) * len(positions) + 2

    model = stadapt.load_model(tmp_path / "run").eval()
    assert model.class_names == {"label": [f"class_{i}" for i in range(CLASSES)]}
    assert (tmp_path / "run" / "recipe.yaml").read_text() == model.recipe.to_yaml()
    video = torch.randn(2, 3, FRAMES, SIZE, SIZE)
    with torch.no_grad():
        ours, theirs = model(video), public_forward(backbone_file, checkpoint, video, prefix)
        plain = stadapt.build_model(stadapt.load_recipe("k400_vitb", recipe_args(backbone_file, tmp_path) + [
            "model.method=linear_probe", f"model.num_classes={CLASSES}"])).eval()
        plain.heads.label.weight.copy_(model.heads.label.weight)
        plain.heads.label.bias.copy_(model.heads.label.bias)
        without_adapters = plain(video)
    assert not torch.allclose(ours, without_adapters, atol=1e-3)  # the adapters matter
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_class_names_come_from_the_recipe_data(backbone_file, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "classes.txt").write_text("".join(f"action {i}\n" for i in range(CLASSES)))
    torch.save(public_checkpoint(range(DEPTH), ["after_attn"]), tmp_path / "ckpt.pth")
    convert_official(tmp_path / "ckpt.pth", "k400_vitb", tmp_path / "run", recipe_args(backbone_file, tmp_path))
    assert stadapt.load_model(tmp_path / "run").class_names["label"][2] == "action 2"
    (tmp_path / "data" / "classes.txt").write_text("a\nb\n")
    with pytest.raises(CheckpointError, match="names 2 classes"):
        convert_official(tmp_path / "ckpt.pth", "k400_vitb", tmp_path / "run2", recipe_args(backbone_file, tmp_path))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


@pytest.mark.parametrize("write", [lambda p, obj: torch.save(obj, p), lambda p, obj: p.write_bytes(pickle.dumps(obj))])
def test_pickled_code_is_refused_without_running(tmp_path, monkeypatch, write):
    monkeypatch.chdir(tmp_path)
    write(tmp_path / "evil.pth", {"model": {"fc.weight": _Exploit()}})
    with pytest.raises(CheckpointError, match="refused without running"):
        convert_official(tmp_path / "evil.pth", "k400_vitb", tmp_path / "run", ["model.pretrained=none"])
    assert not (tmp_path / "pwned-by-pickle").exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, message", [
    ({"state_dict": {}}, "no 'model' state dict"),
    ({"model": {"visual.conv1.weight": torch.zeros(1)}}, "no transformer.resblocks"),
    (b"not a checkpoint", "not a PyTorch checkpoint"),
    (b"PK\x03\x04 truncated zip", "not a readable PyTorch checkpoint"),
])
def test_foreign_files_are_one_error(tmp_path, content, message):
    path = tmp_path / "foreign.pth"
    path.write_bytes(content) if isinstance(content, bytes) else torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        convert_official(path, "k400_vitb", tmp_path / "run", ["model.pretrained=none"])


def test_mixed_positions_and_wrong_backbone_are_refused(backbone_file, tmp_path):
    checkpoint = public_checkpoint([0, 1], ["after_attn"])
    checkpoint["model"].update({k.replace("resblocks.1.adapter_pre_mlp", "resblocks.2.adapter_pre_attn"): v
                                for k, v in checkpoint["model"].items() if "resblocks.1." in k})
    torch.save(checkpoint, tmp_path / "mixed.pth")
    with pytest.raises(CheckpointError, match="same positions in every adapted block"):
        convert_official(tmp_path / "mixed.pth", "k400_vitb", tmp_path / "run", recipe_args(backbone_file, tmp_path))
    torch.save(public_checkpoint(range(DEPTH), ["after_attn"]), tmp_path / "ckpt.pth")
    with pytest.raises(CheckpointError, match="token width 96, but ViT-B-16-quickgelu has width 768"):
        convert_official(tmp_path / "ckpt.pth", "k400_vitb", tmp_path / "run", ["model.pretrained=none"])


def test_cli_exit_codes(backbone_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.save(public_checkpoint(range(DEPTH), ["after_attn"]), tmp_path / "ckpt.pth")
    args = ["--recipe", "k400_vitb"] + [a for s in recipe_args(backbone_file, tmp_path) for a in ("--set", s)]
    assert main(["convert", "official", "ckpt.pth", *args, "--out", "run"]) == 0
    assert "tensors imported" in capsys.readouterr().out and (tmp_path / "run" / "adapter.safetensors").is_file()
    assert main(["convert", "official", "ckpt.pth", *args, "--out", "run"]) == 2  # never overwrites a run
    torch.save({"model": {"fc.weight": _Exploit()}}, tmp_path / "evil.pth")
    assert main(["convert", "official", "evil.pth", *args, "--out", "run2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "refused without running" in err and not (tmp_path / "pwned-by-pickle").exists()
    assert main(["convert", "official", "missing.pth", *args, "--out", "run3"]) == 2
    assert main(["convert", "official", "ckpt.pth", "--out", "run4"]) == 2  # --recipe is required
