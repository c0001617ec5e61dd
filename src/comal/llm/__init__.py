"""The LLM side: each rule's sampled-loss form, read from the same :class:`~comal.rules.ProxStep`."""
