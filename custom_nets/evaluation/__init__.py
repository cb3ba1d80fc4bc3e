# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Experiments on top of the bundle: baselines without deep learning (``baselines``), scores of prediction folders
(``evaluate``), the pipeline train → infer → baselines → evaluate (``pipeline``), tables and labels (``comparison``)
and figures (``figures``)."""
