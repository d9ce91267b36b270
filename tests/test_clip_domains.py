import os
import shutil
import socket
import zipfile

import open_clip
import pytest
import torch
from PIL import Image

from datasets import PairedDataset
from utils.clip_domains import (
    cache_file_for,
    classify,
    clip_precision,
    domain_embeddings,
    domain_prompts,
    load_clip,
    prepare_domains,
    prompt_embeddings,
    prompts_per_domain,
    quick_gelu_for,
    text_features,
)
from utils.config import DEFAULT_DOMAINS, ClipConfig, DomainPrompts
from utils.errors import ConfigError, WeightsError
from utils.image import list_images, read_rgb, write_rgb


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _prepare(paths, cache, pretrained=None, template="a photo of a {}"):
    clip = ClipConfig(arch="tiny-clip", pretrained=pretrained, template=template, batch_size=2)
    return prepare_domains(paths[0].parent, [p.name for p in paths], cache, clip, num_workers=1)


def domain_cache_for(clip: ClipConfig, hazy_dir):
    """CLIP's domains of every image in `hazy_dir`, cached where training keeps them."""
    names = [p.name for p in list_images(hazy_dir)]
    return prepare_domains(hazy_dir, names, cache_file_for(clip, hazy_dir), clip)


def _rebuilt(capsys) -> bool:
    out = capsys.readouterr().out
    assert ("reusing" in out) != ("classifying" in out)
    return "classifying" in out


def test_random_tiny_clip_is_reproducible_and_keeps_rng_state(tiny_clip):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model, _, _ = load_clip("tiny-clip", None)
    assert torch.equal(torch.rand(3), expected)
    assert _states_equal(model, tiny_clip[0])
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_local_weights_file_is_loaded(tiny_clip, tiny_clip_weights):
    model, _, _ = load_clip("tiny-clip", str(tiny_clip_weights))
    assert _states_equal(model, tiny_clip[0])


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_weights_file_is_loaded(tiny_clip, tmp_path):
    """OpenAI's original checkpoints are TorchScript archives."""
    torch.jit.save(torch.jit.script(tiny_clip[0]), str(tmp_path / "jit.pt"))
    model, _, _ = load_clip("tiny-clip", str(tmp_path / "jit.pt"))
    assert _states_equal(model, tiny_clip[0])


def test_unloadable_weights_explain_the_fix(tmp_path):
    with pytest.raises(WeightsError, match=r"not found.*clip\.pretrained"):
        load_clip("tiny-clip", str(tmp_path / "ViT-B-32.pt"))
    with pytest.raises(WeightsError, match=r"not-a-tag.*clip\.pretrained"):
        load_clip("tiny-clip", "not-a-tag")
    (tmp_path / "wrong.pt").write_bytes(b"garbage")
    with pytest.raises(WeightsError, match=r"wrong\.pt"):
        load_clip("tiny-clip", str(tmp_path / "wrong.pt"))


def test_prompts_embeddings_and_probabilities(tiny_clip, synthetic_root):
    model, preprocess, tokenizer = tiny_clip
    prompts = domain_prompts()
    assert prompts == ["a photo of a indoor", "a photo of a outdoor"]
    emb = prompt_embeddings(model, tokenizer, prompts)
    assert emb.shape == (2, 32)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)

    arrays = [read_rgb(p) for p in list_images(synthetic_root / "test" / "hazy")]
    probs = classify(model, preprocess, arrays, emb)
    assert probs.shape == (3, 2)
    assert torch.allclose(probs.sum(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.equal(
        probs, classify(model, preprocess, [Image.fromarray(a) for a in arrays], emb)
    )


def test_domain_ids_take_their_own_prompts_averaged_or_the_authors_by_default(tiny_clip):
    model, _, tokenizer = tiny_clip
    default = prompts_per_domain(ClipConfig())
    assert default == [["a photo of a indoor"], ["a photo of a outdoor"]]
    # One prompt per domain: exactly its embedding, as upstream (no re-normalisation).
    upstream = prompt_embeddings(model, tokenizer, domain_prompts())
    assert torch.equal(domain_embeddings(model, tokenizer, default), upstream)

    several = ("a photo of a room", "an indoor scene")
    clip = ClipConfig(prompts=(DomainPrompts("indoor", several),))
    prompts = prompts_per_domain(clip)
    assert prompts == [list(several), ["a photo of a outdoor"]]
    emb = domain_embeddings(model, tokenizer, prompts)
    mean = prompt_embeddings(model, tokenizer, several).mean(0)
    assert torch.allclose(emb[0], mean / mean.norm(), atol=1e-6)
    assert torch.equal(emb[1], upstream[1])


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ((DomainPrompts("indoors", ("x",)),), r"'indoors' is not one of clip\.domains"),
        ((DomainPrompts("indoor", ("x",)), DomainPrompts("indoor", ("y",))), "given twice"),
        ((DomainPrompts("outdoor", ()),), "'outdoor' has no texts"),
    ],
)
def test_prompts_of_unknown_repeated_or_empty_domains_are_named(entries, message):
    with pytest.raises(ConfigError, match=message):
        prompts_per_domain(ClipConfig(prompts=entries))


def test_a_cache_of_one_prompt_string_per_domain_is_still_reused(synthetic_root, tmp_path, capsys):
    paths = list_images(synthetic_root / "test" / "hazy")
    cache_file = tmp_path / "domains.pt"
    _prepare(paths, cache_file)
    data = torch.load(cache_file, weights_only=True)
    record = {**data["record"], "prompts": ["a photo of a indoor", "a photo of a outdoor"]}
    torch.save({**data, "record": record}, cache_file)
    capsys.readouterr()
    _prepare(paths, cache_file)
    assert not _rebuilt(capsys)


def test_hard_and_soft_features():
    emb = torch.nn.functional.normalize(torch.randn(2, 8), dim=-1)
    probs = torch.tensor([[0.3, 0.7]])
    hard = text_features(probs, emb, "hard")
    soft = text_features(probs, emb, "soft")
    for feat in (hard, soft):
        assert feat.shape == (1, 8)
        assert torch.allclose(feat.norm(), torch.tensor(1.0), atol=1e-6)
    assert torch.equal(hard[0], emb[1])
    expected = 0.3 * emb[0] + 0.7 * emb[1]
    assert torch.allclose(soft[0], expected / expected.norm(), atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        text_features(probs, emb, "top1")


def test_cache_reused_and_feeds_the_dataset(synthetic_root, tmp_path, capsys):
    paths = list_images(synthetic_root / "test" / "hazy")
    cache_file = tmp_path / "cache" / "domains.pt"
    first = _prepare(paths, cache_file)
    assert _rebuilt(capsys)
    assert sum(first.counts().values()) == 3
    assert set(first.domains.values()) <= set(DEFAULT_DOMAINS)

    mtime = cache_file.stat().st_mtime_ns
    again = _prepare(paths, cache_file)
    assert not _rebuilt(capsys)
    assert cache_file.stat().st_mtime_ns == mtime
    assert torch.equal(again.probs, first.probs)
    feats = again.text_features("soft")  # the feature mode needs no new classification
    assert not torch.equal(feats["0000.png"], first.text_features("hard")["0000.png"])

    ds = PairedDataset(synthetic_root, "test", "test")
    ds.set_text_features(feats)
    text = ds[0]["text"]
    assert text.shape == (1, 32)
    assert torch.allclose(text.norm(), torch.tensor(1.0), atol=1e-5)

    os.utime(paths[0], ns=(0, 0))  # touched but identical content
    _prepare(paths, cache_file)
    assert not _rebuilt(capsys)


def test_cache_rebuilt_when_inputs_change(synthetic_root, tmp_path, tiny_clip, capsys):
    paths = list_images(synthetic_root / "test" / "hazy")
    cache_file = tmp_path / "domains.pt"
    _prepare(paths, cache_file)
    assert _rebuilt(capsys)

    _prepare(paths, cache_file, template="a hazy photo of an {} scene")
    assert _rebuilt(capsys)
    _prepare(paths, cache_file)
    assert _rebuilt(capsys)

    weights = tmp_path / "w.pt"
    state = tiny_clip[0].state_dict()
    torch.save(state, weights)
    _prepare(paths, cache_file, pretrained=str(weights))
    assert "CLIP weights changed" in capsys.readouterr().out
    _prepare(paths, cache_file, pretrained=str(weights))
    assert not _rebuilt(capsys)
    torch.save({**state, "logit_scale": state["logit_scale"] + 1}, weights)
    _prepare(paths, cache_file, pretrained=str(weights))
    assert "CLIP weights changed" in capsys.readouterr().out

    _prepare(paths[:2], cache_file, pretrained=str(weights))
    assert "image list changed" in capsys.readouterr().out

    img = read_rgb(paths[1])
    img[0, 0] = 255 - img[0, 0]
    write_rgb(paths[1], img)
    _prepare(paths[:2], cache_file, pretrained=str(weights))
    assert "image content changed (0001.png)" in capsys.readouterr().out


def test_truncated_cache_is_rebuilt(synthetic_root, tmp_path, capsys):
    paths = list_images(synthetic_root / "test" / "hazy")
    cache_file = tmp_path / "domains.pt"
    first = _prepare(paths, cache_file)
    data = cache_file.read_bytes()
    cache_file.write_bytes(data[: len(data) // 2])
    capsys.readouterr()
    second = _prepare(paths, cache_file)
    assert "unreadable or truncated" in capsys.readouterr().out
    assert torch.equal(first.probs, second.probs)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left


def test_cache_of_an_earlier_format_is_rebuilt(synthetic_root, tmp_path, capsys):
    """Earlier caches classified EXIF-rotated photos as stored, not upright."""
    paths = list_images(synthetic_root / "test" / "hazy")
    cache_file = tmp_path / "domains.pt"
    _prepare(paths, cache_file)
    data = torch.load(cache_file, weights_only=True)
    torch.save({**data, "format": 1}, cache_file)
    capsys.readouterr()
    _prepare(paths, cache_file)
    assert "written by an earlier version" in capsys.readouterr().out


def test_fp16_clip_rounds_as_openai_clip_on_a_gpu(tiny_clip, synthetic_root):
    """OpenAI's CLIP on a GPU: fp16 weights (LayerNorm in fp32), and fp16 similarities,
    softmax and text features, which the cache keeps as float32."""
    model, preprocess, tokenizer = load_clip("tiny-clip", None, precision="fp16")
    assert model.visual.conv1.weight.dtype == model.text_projection.dtype == torch.float16
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)

    arrays = [read_rgb(p) for p in list_images(synthetic_root / "test" / "hazy")]
    emb = prompt_embeddings(model, tokenizer, domain_prompts())
    probs = classify(model, preprocess, arrays, emb)
    for t in (emb, probs):
        assert t.dtype == torch.float32 and torch.equal(t.half().float(), t)
    emb32 = prompt_embeddings(tiny_clip[0], tiny_clip[2], domain_prompts())
    probs32 = classify(tiny_clip[0], tiny_clip[1], arrays, emb32)
    assert torch.allclose(probs, probs32, atol=1e-2) and not torch.equal(probs, probs32)


def test_clip_precision_auto_is_fp16_on_cuda_only():
    assert clip_precision("auto", "cuda:0") == "fp16"
    assert clip_precision("auto", torch.device("cpu")) == "fp32"
    assert clip_precision("fp32", "cuda") == "fp32"
    with pytest.raises(ConfigError, match=r"clip\.precision"):
        clip_precision("bf16", "cpu")


def test_cache_records_precision_and_activation(synthetic_root, tmp_path, capsys):
    hazy = synthetic_root / "test" / "hazy"
    clip = ClipConfig(arch="tiny-clip", pretrained=None, cache_dir=str(tmp_path), batch_size=2)
    first = domain_cache_for(clip, hazy)
    assert (first.record["precision"], first.record["activation"]) == ("fp32", "GELU")
    assert _rebuilt(capsys)

    half = domain_cache_for(ClipConfig(**{**clip.__dict__, "precision": "fp16"}), hazy)
    assert "CLIP precision changed (fp32 -> fp16)" in capsys.readouterr().out
    assert half.record["precision"] == "fp16"
    assert torch.equal(half.probs.half().float(), half.probs)

    quick = domain_cache_for(ClipConfig(**{**clip.__dict__, "quick_gelu": True}), hazy)
    assert "CLIP activation changed (GELU -> QuickGELU)" in capsys.readouterr().out
    assert not torch.equal(quick.probs, first.probs)

    cache_file = next(tmp_path.glob("*.pt"))
    data = torch.load(cache_file, weights_only=True)
    torch.save({**data, "format": 1}, cache_file)  # written before the record named both
    domain_cache_for(ClipConfig(**{**clip.__dict__, "quick_gelu": True}), hazy)
    assert "cache format 1" in capsys.readouterr().out


def test_quick_gelu_rule(tiny_clip_weights, tmp_path):
    """QuickGELU for OpenAI-trained weights: tags say so, OpenAI's own files are TorchScript,
    and a state-dict file counts as OpenAI's for an architecture that has OpenAI weights."""
    torchscript = tmp_path / "ViT-B-32.pt"
    with zipfile.ZipFile(torchscript, "w") as z:
        z.writestr("ViT-B-32/constants.pkl", b"")
    state_dict = str(tiny_clip_weights)
    assert quick_gelu_for("ViT-B-32", state_dict)
    assert not quick_gelu_for("tiny-clip", state_dict)
    assert quick_gelu_for("tiny-clip", str(torchscript))
    assert quick_gelu_for("ViT-B-32", "openai")
    assert not quick_gelu_for("ViT-B-32", "laion2b_s34b_b79k")
    assert not quick_gelu_for("ViT-B-32", None)
    assert not quick_gelu_for("ViT-B-32", state_dict, False)
    assert quick_gelu_for("tiny-clip", None, True)
    assert quick_gelu_for("ViT-B-32-quickgelu", None, False)  # the architecture's own


def test_openai_weights_as_a_state_dict_keep_quick_gelu(tmp_path, monkeypatch, capsys):
    """A state dict of QuickGELU weights (as open_clip's ViT-B-32/openai file) for an
    architecture with OpenAI weights runs with QuickGELU, and says so."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        openai_trained = open_clip.create_model("tiny-clip", force_quick_gelu=True).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(openai_trained.state_dict(), path)
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model", lambda arch: ["openai"])
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    expected = openai_trained.encode_image(images)

    model, _, _ = load_clip("tiny-clip", str(path))
    assert "QuickGELU" in capsys.readouterr().out
    torch.testing.assert_close(model.encode_image(images), expected)
    gelu, _, _ = load_clip("tiny-clip", str(path), quick_gelu=False)
    assert not torch.allclose(gelu.encode_image(images), expected, atol=1e-3)


@pytest.fixture
def unreachable_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, and a Hub at a closed port of this machine (a connection
    is refused at once), whatever network the machine has."""
    from huggingface_hub import constants

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        hub = f"http://127.0.0.1:{s.getsockname()[1]}"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", hub)
    template = f"{hub}/{{repo_id}}/resolve/{{revision}}/{{filename}}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    for proxy in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    return tmp_path / "hub"


def test_weights_neither_cached_nor_downloadable_fail_at_once(unreachable_hub):
    """No download is tried (open_clip's retries took 47 s offline): the error comes from
    looking in the cache and one refused connection."""
    with pytest.raises(
        WeightsError,
        match=r"ViT-B-32/openai are not in the Hugging Face cache .*hub\) and cannot be "
        r"downloaded \(no connection to 127\.0\.0\.1:\d+: .*clip\.pretrained",
    ):
        load_clip("ViT-B-32", "openai")


def test_weights_in_the_hugging_face_cache_load_without_the_network(
    unreachable_hub, tiny_clip, tiny_clip_weights, monkeypatch
):
    """A tag's file in the cache is used as it is: no connection is tried (open_clip asked
    the Hub for its safetensors file first, for 24 s offline)."""
    tags = {"cached": {"hf_hub": "someone/tiny-clip/"}}
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-clip", tags)
    repo = unreachable_hub / "models--someone--tiny-clip"
    commit = "0" * 40
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    shutil.copy(tiny_clip_weights, repo / "snapshots" / commit / "open_clip_pytorch_model.bin")
    tried = []

    def connect(sock, address):
        tried.append(address)
        raise ConnectionRefusedError(111, "refused")

    monkeypatch.setattr(socket.socket, "connect", connect)
    model, _, _ = load_clip("tiny-clip", "cached")
    assert _states_equal(model, tiny_clip[0])
    assert tried == []
