"""End-to-end jobs built from the layers below: the demo behind `make demo`."""
