# Copyright (c) labelless contributors. Licensed under the Apache License, Version 2.0.
"""Few-shot machinery shared by SSL-ALPNet, DSPNet and PSMNet: folds, episodes, the evaluation protocol."""
