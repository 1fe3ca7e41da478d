"""The project's lab, beside the library and not installed with it: offline datasets (digits, Fashion-MNIST, the
Latin and Han glyph sets), the experiment runner the demo, notebooks, benchmarks and tests share, and the demo.

Run from a checkout of the repository (``python -m lab.demo``); ``pip install pml-divide-conquer`` installs only
the library, ``pml_divide_conquer``.
"""
