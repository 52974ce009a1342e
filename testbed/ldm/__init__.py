"""The split latent-diffusion runtime: stages, split plans, the ES -> UE handoff, feature merging, quality metrics.

Modules (import what you need; this package imports nothing heavy by itself):

* ``merging``: ``merge(latent, beta, seed, method) -> MergedLatent``, ``unmerge(merged) -> latent``; the methods
  (``merge_methods``): ``global_l2`` (default), ``global`` (the paper's rule), ``window``.
* ``metrics``: ``mse``, ``neg_log_mse``, ``psnr_db``, ``ms_ssim``, ``quality``; ``feature_metrics`` for the
  optional FD / LPIPS / CLIP-score path; ``reference`` for cached N_max reference images.
* ``errors``: ``LdmError``; requests are :class:`megbed.testbed.request.Request` (the contract). ``schedulers``: resumable
  samplers. ``handoff``: ``Handoff``.
* ``model``: ``load_pipeline(model_dir, device=..., dtype=...) -> LdmModel``, decoders, ``device_sync``.
* ``stages`` / ``plan`` / ``runner``: the stage objects, ``SplitPlan`` presets and the in-process runner.
"""
