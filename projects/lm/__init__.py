"""The reference train target for meshes and pods (not a paper): see README.md and train.py."""
