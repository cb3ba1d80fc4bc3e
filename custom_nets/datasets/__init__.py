# Copyright (c) the SC-GAN bundle contributors. Licensed under the Apache License, Version 2.0.
"""Where subjects come from: synthetic subjects (``phantom``), a user's folders (``folders``: BIDS-like or flat) and
real population templates (``templates``: SPM's avg152 images). Each writes a datalist ``custom_nets.data`` reads."""
