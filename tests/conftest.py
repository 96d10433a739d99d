"""Root of the test suite: its directory is put on ``sys.path`` by pytest (no ``__init__``),
so shared helpers such as ``waiting`` import by name from any test module."""
