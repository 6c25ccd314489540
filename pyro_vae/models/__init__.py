"""The models: :class:`~.vae.VAE` and its declared interface, the models with labels, the mixture and the
hierarchical model, wrapped Pyro pairs, the contract a model is checked against, and the registry (the only module
that knows every model)."""
