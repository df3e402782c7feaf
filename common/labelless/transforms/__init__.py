# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""MONAI transforms of labelless (array transforms and their dictionary twins)."""
