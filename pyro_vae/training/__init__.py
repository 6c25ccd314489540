"""Training: :func:`~.fit.fit` and its Trainer, the step choice (:mod:`.steps`), the hooks around the loop
(:mod:`.hooks`) and the process group (:mod:`.processes`)."""
