"""Files copied into a Triton Python-backend model version: ``model.py`` (the Triton side) and
``network.py`` (a numpy forward pass over ``weights.npz``, so Triton needs no torch)."""
