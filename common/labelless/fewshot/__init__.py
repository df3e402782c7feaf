# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Few-shot segmentation tasks: :mod:`labelless.fewshot.volume` (SSL-ALPNet, DSPNet, PSMNet: 3D scans, 2D slices)
and :mod:`labelless.fewshot.image` (FSMS: 2D RGB images)."""
