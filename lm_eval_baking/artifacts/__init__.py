"""What a bake leaves on disk: the bake folder and its record, adapter safety, chain and strength exports."""
