"""Triton Python-backend models of the example ensemble's steps (copied into a model repository).

Apart from ``triton_template``: the example classifier's cached build is keyed on that folder.
"""
