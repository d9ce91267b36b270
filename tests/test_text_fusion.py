"""The text-image fusion: MODEL_SPEC's formula, its modes, and the inputs it refuses."""

import math

import pytest
import torch

from models import TextImageFusion
from models.text_fusion import fused_attention, pixel_text_attention

D = 16  # a small CLIP width keeps these tests fast; the formula does not depend on it


def _fusion(mode: str = "concat", attention: str = "sdpa", **kwargs) -> TextImageFusion:
    torch.manual_seed(0)
    return TextImageFusion(text_dim=D, mode=mode, attention=attention, **kwargs)


def _inputs(batch: int = 2, h: int = 5, w: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    image = torch.rand(batch, 3, h, w, generator=gen) * 2 - 1
    return image, torch.randn(batch, 1, D, generator=gen) * 3


def _conv1d_k1(conv: torch.nn.Conv1d, t: torch.Tensor) -> torch.Tensor:
    """Conv1d(1 -> P, kernel 1) on (B, 1, D) as D tokens (B, D, P): [b, d, p] = w_p t_bd + b_p."""
    return t[:, 0, :, None] * conv.weight[:, 0, 0] + conv.bias


def _spec_map(f: TextImageFusion, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """MODEL_SPEC's image branch written out: every pixel attends over the D text tokens."""
    b, _, h, w = image.shape
    q = torch.einsum("pc,bchw->bhwp", f.q1.weight[:, :, 0, 0], image).reshape(b, h * w, -1)
    q = q + f.q1.bias
    k, v = _conv1d_k1(f.k2, text), _conv1d_k1(f.v2, text)
    attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(5), dim=-1)  # over the D tokens
    out = attn @ v  # (B, HW, P)
    fused = torch.einsum("op,bnp->bon", f.postProj_s.weight[:, :, 0, 0], out)
    return (fused + f.postProj_s.bias[:, None]).reshape(b, -1, h, w)


def test_defaults_are_the_papers_module():
    """MODEL_SPEC: D = 512 (ViT-B/32), P = 5, a 3-channel map concatenated to the RGB image."""
    f = TextImageFusion()
    shapes = {k: tuple(v.shape) for k, v in f.state_dict().items()}
    assert shapes == {
        "q1.weight": (5, 3, 1, 1),
        "q1.bias": (5,),
        "k2.weight": (5, 1, 1),
        "k2.bias": (5,),
        "v2.weight": (5, 1, 1),
        "v2.bias": (5,),
        "postProj_s.weight": (3, 5, 1, 1),
        "postProj_s.bias": (3,),
    }
    assert f.out_chans == 6
    assert f(torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 512)).shape == (1, 6, 4, 4)


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_concat_and_add_follow_the_spec(attention):
    image, text = _inputs()
    concat, add = _fusion("concat", attention), _fusion("add", attention)
    add.load_state_dict(concat.state_dict())
    with torch.no_grad():
        fused = _spec_map(concat, image, text)
        assert (concat(image, text) - torch.cat([image, fused], dim=1)).abs().max() < 1e-5
        assert (add(image, text) - (image + fused)).abs().max() < 1e-5


@pytest.mark.parametrize("attention", ["sdpa", "explicit"])
def test_uniform_attention_gives_the_mean_text_value(attention):
    """With Q = 0 every pixel weighs the D tokens equally: the map is an affine map of mean(t)."""
    f = _fusion("add", attention)
    with torch.no_grad():
        f.q1.weight.zero_()
        f.q1.bias.zero_()
        f.v2.weight.fill_(1.0)
        f.v2.bias.zero_()
        f.postProj_s.weight.fill_(0.2)  # 5 channels of mean(t), averaged
        f.postProj_s.bias.fill_(0.5)
        image = torch.zeros(1, 3, 2, 3)  # 6 pixels, 4 tokens: a softmax over pixels differs
        text = torch.tensor([[[1.0, 2.0, 3.0, 10.0] + [0.0] * (D - 4)]])  # mean 1.0
        assert torch.allclose(f(image, text), torch.full((1, 3, 2, 3), 1.5), atol=1e-6)


@pytest.mark.parametrize("mode", ["concat", "add"])
def test_two_dimensional_text_and_independent_samples(mode):
    f = _fusion(mode)
    image, text = _inputs(batch=3)
    with torch.no_grad():
        out = f(image, text)
        assert torch.equal(f(image, text[:, 0]), out)
        for i in range(3):
            single = f(image[i : i + 1], text[i : i + 1, 0])
            assert (single - out[i : i + 1]).abs().max() < 1e-6
        # The text matters, and each sample uses its own.
        assert (f(image, text.flip(0)) - out).abs().max() > 1e-3


def test_double_precision_text_is_accepted():
    f = _fusion()
    image, text = _inputs()
    with torch.no_grad():
        assert (f(image, text.double()) - f(image, text)).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("mode", "out_chans", "channels"), [("concat", 3, 6), ("concat", 5, 8), ("add", 3, 3)]
)
def test_output_channels(mode, out_chans, channels):
    f = TextImageFusion(text_dim=D, out_chans=out_chans, mode=mode)
    assert f.out_chans == channels
    image, text = _inputs()
    assert f(image, text).shape == (2, channels, 5, 7)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "bogus"}, r"^fusion mode must be 'concat' or 'add', got 'bogus'$"),
        ({"mode": "none"}, r"^fusion mode must be 'concat' or 'add', got 'none'$"),
        ({"attention": "flash"}, r"^attention must be one of \('sdpa', 'explicit'\), got 'flash'$"),
        ({"mode": "add", "out_chans": 4}, r"^'add' fusion needs out_chans == in_chans$"),
    ],
)
def test_invalid_constructor_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TextImageFusion(**kwargs)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, r"^this model fuses a CLIP text feature: call model\(hazy, text_feature\)$"),
        (torch.zeros(2, 1, 8), r"text feature must be \(B, 1, 16\) or \(B, 16\), got \(2, 1, 8\)"),
        (torch.zeros(2, 2, D), r"got \(2, 2, 16\)"),
        (torch.zeros(2, 1, 1, D), r"got \(2, 1, 1, 16\)"),
        (torch.zeros(3, 1, D), r"batch of text features \(3\) != batch of image \(2\)"),
        (torch.zeros(1, D), r"batch of text features \(1\) != batch of image \(2\)"),
    ],
)
def test_bad_text_is_refused(text, message):
    image, _ = _inputs()
    with pytest.raises(ValueError, match=message):
        _fusion()(image, text)


def test_upstream_text_branch_has_its_shapes_and_changes_nothing():
    plain, branch = _fusion(), _fusion(text_branch=True)
    assert not {"q2.weight", "k1.weight", "v1.weight", "postProj_t.weight"} & set(
        plain.state_dict()
    )
    shapes = {k: tuple(v.shape) for k, v in branch.state_dict().items()}
    assert shapes["q2.weight"] == (5, 1, 1)
    assert shapes["k1.weight"] == shapes["v1.weight"] == (5, 3, 1, 1)
    assert shapes["postProj_t.weight"] == (1, 5, 1)
    branch.load_state_dict(plain.state_dict(), strict=False)
    image, text = _inputs()
    with torch.no_grad():
        assert torch.equal(branch(image, text), plain(image, text))


def test_sdpa_never_builds_the_attention_map(monkeypatch):
    def explicit_map(*args):
        raise AssertionError("the (H*W x D) attention map was built")

    monkeypatch.setattr("models.text_fusion.pixel_text_attention", explicit_map)
    image, text = _inputs()
    assert _fusion(attention="sdpa")(image, text).shape == (2, 6, 5, 7)
    with pytest.raises(AssertionError, match="attention map was built"):
        _fusion(attention="explicit")(image, text)


def test_upstream_text_branch_is_computed_when_asked_for():
    """The straightforward model that benchmarks measure pays for the unused branch."""
    shapes = []
    f = _fusion(text_branch=True)
    f.postProj_t.register_forward_hook(lambda module, args, out: shapes.append(tuple(out.shape)))
    f(*_inputs())
    assert shapes == [(2, 1, D)]


def test_upstream_text_branch_formula():
    """Text tokens attend over the pixels (softmax over H*W), projected back to (B, 1, D)."""
    f = _fusion(text_branch=True)
    image, text = _inputs()
    b, _, h, w = image.shape
    with torch.no_grad():
        q = _conv1d_k1(f.q2, text)  # (B, D, P)
        k = torch.einsum("pc,bchw->bhwp", f.k1.weight[:, :, 0, 0], image) + f.k1.bias
        v = torch.einsum("pc,bchw->bhwp", f.v1.weight[:, :, 0, 0], image) + f.v1.bias
        k, v = k.reshape(b, h * w, -1), v.reshape(b, h * w, -1)
        out = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(5), dim=-1) @ v  # (B, D, P)
        expected = (out @ f.postProj_t.weight[0, :, 0] + f.postProj_t.bias)[:, None]
        result = f._text_branch(image, text)
    assert result.shape == (2, 1, D)
    assert (result - expected).abs().max() < 1e-5


def _record_sdpa_widths(monkeypatch) -> list[int]:
    widths: list[int] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def record(q, *args, **kwargs):
        widths.append(q.shape[-1])
        return sdpa(q, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
    return widths


def test_padded_heads_give_the_unpadded_attention(monkeypatch):
    """Off the CPU, the width-5 heads reach SDPA as width 8 (what its fused kernels take),
    with the same result: softmax(q k^T / sqrt(5)) v."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 5, generator=gen) for n in (12, D, D))
    widths = _record_sdpa_widths(monkeypatch)
    out = fused_attention(q, k, v, head_multiple=8)
    assert widths == [8] and out.shape == (2, 12, 5)
    torch.testing.assert_close(out, pixel_text_attention(q, k, v))


@pytest.mark.parametrize(("device", "width"), [("cpu", 16), ("meta", 8)])
def test_heads_are_padded_to_each_devices_fastest_width(monkeypatch, device, width):
    # A meta tensor stands for a GPU one: its shapes follow the same code path.
    widths = _record_sdpa_widths(monkeypatch)
    f = _fusion().to(device)
    image, text = (t.to(device) for t in _inputs())
    assert f(image, text).shape == (2, 6, 5, 7)
    assert widths == [width]
