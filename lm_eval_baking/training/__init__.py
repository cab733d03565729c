"""Baking one prompt: the config, the trainer (PromptBaker) and its loss, resumable work folders, bake()."""
