import pytest
import torch

from featherfl.models import build_model, flat_state, has_batchnorm, load_flat_state, model_names


@pytest.mark.parametrize("name", ["mlp", "lenet", "cnn", "wrn-10-2"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_models_build_and_map_to_logits(name, shape):
    m = build_model(name, shape, 10)
    assert m(torch.zeros(2, *shape)).shape == (2, 10)


def test_registry_has_required_models():
    assert {"mlp", "lenet", "cnn", "wrn-10-2"} <= set(model_names())


def test_norm_option():
    assert has_batchnorm(build_model("lenet", (1, 8, 8), 10, norm="batch"))
    assert not has_batchnorm(build_model("lenet", (1, 8, 8), 10, norm="group"))
    assert not has_batchnorm(build_model("wrn-10-2", (1, 8, 8), 10))


def test_flat_state_roundtrip_includes_bn_buffers():
    a = build_model("lenet", (1, 8, 8), 10, norm="batch")
    a.train()
    a(torch.randn(8, 1, 8, 8))  # moves running stats
    b = build_model("lenet", (1, 8, 8), 10, norm="batch")
    load_flat_state(b, flat_state(a))
    a.eval(), b.eval()
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(a(x), b(x))
    with pytest.raises(ValueError):
        load_flat_state(b, torch.zeros(5))
