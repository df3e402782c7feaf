# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""``python -m labelless`` == the ``labelless`` command."""

from labelless.cli import main

main()
