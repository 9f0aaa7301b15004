import pytest

from stadapt.errors import RecipeError
from stadapt.recipe import bundled_recipes, load_recipe


def test_every_bundled_recipe_loads():
    names = bundled_recipes()
    assert {"k400_vitb", "k400_vitl", "ssv2_vitb", "ssv2_vitl", "ucf101_vitb", "hmdb51_vitb",
            "ek100_vitb", "demo"} <= set(names)
    for name in names:
        load_recipe(name)


def test_table8_values():
    k400 = load_recipe("recipes/k400_vitb.yaml")
    assert (k400.train.steps, k400.train.batch_size, k400.train.lr, k400.train.weight_decay) == (20000, 128, 5e-4, 1e-2)
    assert k400.model.adapter.kernel == [3, 1, 1] and k400.model.adapter.width == 384
    assert k400.data.stride == 16 and k400.data.mirror and k400.data.randaugment is None
    assert (k400.data.test_views.temporal, k400.data.test_views.spatial) == (3, 1)
    ssv2 = load_recipe("ssv2_vitb")
    assert ssv2.model.adapter.positions == ["before_attn", "after_attn"]
    assert ssv2.data.sampling == "uniform" and not ssv2.data.mirror and ssv2.data.randaugment
    assert ssv2.data.train_resize == "random_resized_crop" and ssv2.train.steps == 50000
    assert load_recipe("k400_vitl").train.steps == 40000
    assert load_recipe("ssv2_vitl").model.adapter.positions == ["before_attn"]
    ucf = load_recipe("ucf101_vitb")
    assert (ucf.train.steps, ucf.data.stride, ucf.train.adapter_lr_scale) == (500, 8, 0.1)
    assert load_recipe("ek100_vitb").model.num_classes == {"verb": 97, "noun": 300}


def test_overrides_are_parsed_as_yaml():
    r = load_recipe("k400_vitb", ["train.lr=1e-4", "model.adapter.kernel=[1,3,3]", "model.pretrained=none",
                                  "data.randaugment=null", "model.adapter.layers=[0, 1]"])
    assert r.train.lr == 1e-4 and r.model.adapter.kernel == [1, 3, 3] and r.model.adapter.layers == [0, 1]


@pytest.mark.parametrize("override, message", [
    ("model.adaptr.width=3", "unknown key 'model.adaptr' (did you mean 'model.adapter'?)"),
    ("train.lr=fast", "train.lr must be a number, got 'fast'"),
    ("train.lr=-1", "train.lr = -1.0 must be positive"),
    ("model.adapter.width=0", "model.adapter.width = 0 must be positive"),
    ("model.adapter.kernel=[2,1,1]", "three odd positive sizes"),
    ("data.test_views.temporal=9", "more views than frames"),
    ("model.pretrained=/nowhere/vit.pt", "model.pretrained = '/nowhere/vit.pt' is not a file"),
    ("train.steps=1.5", "train.steps must be an integer"),
    ("model.method=lora", "model.method = 'lora' is not one of"),
])
def test_bad_values_give_one_line(override, message):
    with pytest.raises(RecipeError) as info:
        load_recipe("k400_vitb", [override])
    text = str(info.value)
    assert message in text and "\n" not in text


def test_yaml_cannot_construct_python_objects(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("model: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(path)
    assert not (tmp_path / "pwned").exists()
