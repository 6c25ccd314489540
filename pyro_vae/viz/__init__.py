"""Pictures of a trained model: the latent walks (:mod:`.walks`, the maths), the matplotlib figures
(:mod:`.figures`) and the HTML explorer page (:mod:`.explorer`)."""
