"""The ``jobkit`` command's home: the fronts (``cli/``, ``demo/``) and the shared leaves.

``settings.py``, ``errors.py`` and ``exit_codes.py`` import nothing of the project; ``app.py``
loads the user's app by import string; ``output.py`` prints tables and JSON; ``arguments.py``
checks the fronts' options as they are parsed (one-line usage errors).
"""
