"""The latent cache: exactly the ES's latents and the runtime's reference, resumable shards, keyed folders."""

from __future__ import annotations

import pytest
import torch

from megbed.testbed.distill.cache import LatentCache, LatentCacheError, build_cache
from megbed.testbed.distill.prompts import PromptSpec, heldout_prompts, training_prompts
from megbed.testbed.ldm.reference import compute_reference
from megbed.testbed.ldm.runner import run_split
from megbed.testbed.request import Request


def test_cached_tensors_are_the_es_latents_and_the_reference(sd15, tiny_cache):
    spec = tiny_cache.prompts[1]
    for n in (2, 3):
        req = Request(spec.prompt, n_steps=n, seed=spec.seed, guidance_scale=5.0)
        es = run_split(req, sd15, scheme="meg").es_state["latents"]  # the ES at k = N, before merging
        assert torch.equal(tiny_cache.latent(1, n), es[0])
    ref = compute_reference(sd15, Request(spec.prompt, seed=spec.seed, guidance_scale=5.0), 3)
    assert torch.equal(tiny_cache.target(1), ref[0].half().float())  # training targets are stored in float16
    assert tiny_cache.latent_shape == (4, 8, 8) and tiny_cache.image_shape == (3, 64, 64)
    with pytest.raises(LatentCacheError, match="not cached"):
        tiny_cache.latent(0, 5)


def test_an_interrupted_cache_resumes_at_the_missing_shard(sd15, tmp_path):
    prompts = training_prompts("shapes", 3, 9)
    kw = dict(steps=[2], n_ref=2, guidance_scale=5.0, shard_size=2, target_dtype="float32", progress=False)
    full = build_cache(tmp_path / "a", sd15, prompts, **kw)
    reference = [full.latent(i, 2) for i in range(3)]
    first = (tmp_path / "a" / "shard-00000.safetensors").stat().st_mtime_ns
    (tmp_path / "a" / "shard-00002.safetensors").unlink()
    with pytest.raises(LatentCacheError, match="incomplete|unreadable"):
        LatentCache(tmp_path / "a").latent(2, 2)
    again = build_cache(tmp_path / "a", sd15, prompts, **kw)
    assert (tmp_path / "a" / "shard-00000.safetensors").stat().st_mtime_ns == first  # not regenerated
    assert all(torch.equal(again.latent(i, 2), reference[i]) for i in range(3))
    ref = compute_reference(sd15, Request(prompts[0].prompt, seed=prompts[0].seed, guidance_scale=5.0), 2)
    assert torch.equal(again.target(0), ref[0])  # float32 targets: the reference itself
    with pytest.raises(LatentCacheError, match="another configuration"):
        build_cache(tmp_path / "a", sd15, prompts, **{**kw, "steps": [1, 2]})


def test_prompt_sources(tmp_path):
    train = training_prompts("shapes", 20, 1)
    held = heldout_prompts("shapes", 20)
    assert len({p.prompt for p in train}) > 10 and not {p.prompt for p in train} & {p.prompt for p in held}
    assert [p.seed for p in held] == list(range(20)) and train[0].seed == 100_003
    f = tmp_path / "p.txt"
    f.write_text("# comment\na cat\n\n  a dog  \n")
    assert training_prompts(str(f), 5, 0) == [PromptSpec("a cat", 0), PromptSpec("a dog", 1)]
    from megbed.testbed.distill.prompts import PromptSourceError

    with pytest.raises(PromptSourceError, match="cannot read"):
        training_prompts(str(tmp_path / "none.txt"), 2, 0)
