"""Checkpoints: safetensors + JSON only, resume gives bit-identical next steps, other recipes are refused."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from megbed.testbed.distill.checkpoint import CheckpointError, latest_checkpoint, list_checkpoints
from megbed.testbed.distill.train import Distiller


def _params(dist: Distiller) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in dist.decoder.named_trainable()}


def test_checkpoint_then_resume_gives_the_same_next_step(sd15, tiny_cache, recipe, tmp_path):
    cfg = recipe.replace(steps=3, checkpoint_every=2)
    a = Distiller(sd15, tiny_cache, cfg, tmp_path / "a")
    a.fit(progress=False, export=False)  # steps 0, 1 -> checkpoint at 2 -> step 2 -> checkpoint at 3
    after_a = _params(a)
    assert [s for s, _ in list_checkpoints(tmp_path / "a")] == [2, 3]
    files = sorted(p.name for p in latest_checkpoint(tmp_path / "a").iterdir())
    assert files == ["optimizer.safetensors", "state.json", "weights.safetensors"]

    # A second run resumed from the step-2 checkpoint takes step 2 again: bit-identical parameters and moments.
    shutil.copytree(tmp_path / "a" / "checkpoints" / "step-000002", tmp_path / "b" / "checkpoints" / "step-000002")
    b = Distiller(sd15, tiny_cache, cfg, tmp_path / "b")
    assert b.resume() == 2
    assert b.samples_seen == 2 * cfg.batch_size
    b.train_step()
    for name, value in _params(b).items():
        assert torch.equal(value, after_a[name]), name
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for idx in sa:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[idx][key], sb[idx][key])


def test_fit_resumes_where_it_stopped(sd15, tiny_cache, recipe, tmp_path):
    first = Distiller(sd15, tiny_cache, recipe.replace(steps=2), tmp_path)
    first.fit(progress=False, export=False)
    # Extending the run changes the cosine schedule, so it is another recipe: refused.
    with pytest.raises(CheckpointError, match="other settings.*steps"):
        Distiller(sd15, tiny_cache, recipe.replace(steps=4), tmp_path).fit(progress=False, export=False)
    # Same recipe on another device setting resumes (device / threads / checkpoint period may change).
    again = Distiller(sd15, tiny_cache, recipe.replace(steps=2, checkpoint_every=5), tmp_path)
    summary = again.fit(progress=False, export=False)
    assert summary["steps"] == 2 and again.step == 2
    log = [json.loads(ln) for ln in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train"] == [1, 2]


def test_a_new_run_refuses_a_folder_with_checkpoints(sd15, tiny_cache, recipe, tmp_path):
    Distiller(sd15, tiny_cache, recipe.replace(steps=2), tmp_path).fit(progress=False, export=False)
    with pytest.raises(CheckpointError, match="already holds checkpoints"):
        Distiller(sd15, tiny_cache, recipe.replace(steps=2), tmp_path).fit(resume=False, progress=False)
