"""Glue between the trainer-free core and training frameworks: ``pml`` (PML's trainers, always available) and
``lightning`` (PyTorch Lightning, the ``[lightning]`` extra). Each imports the core; the core imports none of them."""
